"""Case 7, idle cost: CPU time of a connected, idle client with the heartbeat on.

The client runs alone in a fresh child process (``python -m bench.idle URL SECONDS
INTERVAL``), against the emulator in another process, so that only the client's
CPU counts. The child connects, makes one call, then sits idle for the window
and reports its own process CPU time (all its threads) over the window. Measured
with the default heartbeat (``Heartbeat()``: a ping after 5 s of silence) and with a
1 s one.
Target: < 1% of one core.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from typing import Any

from bench._common import CaseResult, EmulatorProcess, Row, make_client, run_json

NAME = "idle"
TITLE = "Idle cost (connected client, heartbeat on, no calls)"
TARGET = 1.0  # percent of one core


def _child(url: str, seconds: float, interval: float | None) -> dict[str, Any]:
    import diffusionmaster

    heartbeat = (
        diffusionmaster.Heartbeat()
        if interval is None
        else diffusionmaster.Heartbeat(interval=interval, timeout=interval)
    )
    with make_client(url, heartbeat=heartbeat) as client:
        client.enhance_prompt("warm up")
        threads = threading.active_count()
        cpu, wall = time.process_time(), time.perf_counter()
        threading.Event().wait(seconds)  # idle: only the client's own threads run
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
        connected = client.state.value
    return {
        "cpu_s": cpu,
        "wall_s": wall,
        "threads": threads,
        "state": connected,
        "interval_s": heartbeat.interval,
    }


def run(quick: bool) -> CaseResult:
    seconds = 0.5 if quick else 10.0
    result = CaseResult(NAME, TITLE)
    with EmulatorProcess() as emu:
        for interval in ("default", "1"):
            argv = [sys.executable, "-m", "bench.idle", emu.url, str(seconds), interval]
            report = run_json(argv, timeout=seconds + 30)
            label = f"heartbeat every {report['interval_s']:g} s" + (
                " (the default)" if interval == "default" else ""
            )
            percent = 100.0 * report["cpu_s"] / report["wall_s"]
            result.details[label] = report
            result.rows.append(
                Row(
                    f"{label}, over {seconds:g} s",
                    percent,
                    None,
                    "% of a core",
                    None,
                    f"< {TARGET:g}%",
                    percent < TARGET,
                    kind="absolute",
                )
            )
    result.notes.append(
        "Process CPU time (user + system, every thread) of a child that only holds the "
        "client; the emulator runs in another process."
    )
    return result


if __name__ == "__main__":
    every = None if sys.argv[3] == "default" else float(sys.argv[3])
    print(json.dumps(_child(sys.argv[1], float(sys.argv[2]), every)))
