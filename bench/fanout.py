"""Case 8, fan-out: 200 and 1,000 text2img tasks of 1 s each from one thread.

The emulator takes ``LATENCY`` seconds per image. Ours: ``client.map`` over the
prompts with ``max_in_flight`` = all of them, from one thread, until every
result is back. Baseline: a raw websocket-client loop that sends every
``newTask`` frame, then reads until every image has arrived (the least any
program can do: the server-side latency overlaps completely). Runs of both
sides alternate. Target: <= 1.25x the raw pipelined loop's wall time. Also
reported: the library threads alive while the tasks are in flight, and the
memory per task in flight (tracemalloc, frames withheld).
"""

from __future__ import annotations

import functools
import threading
import time
import tracemalloc
import uuid
from typing import Any

from bench._common import (
    CaseResult,
    EmulatorProcess,
    RawConnection,
    interleave,
    make_client,
    ratio_row,
    summary,
)

NAME = "fanout"
TITLE = "Fan-out from one thread (text2img, 1 s per image on the server)"
LATENCY = 1.0


def _task_frame(task_uuid: str, prompt: str) -> str:
    from diffusionmaster import protocol

    return protocol.encode(
        protocol.ImageTask(
            task_uuid=task_uuid, task_type=1, prompt_text=prompt, number_results=1,
            model_id=13, size_id=1, offset=0,
        )
    )  # fmt: skip


def _raw_run(raw: RawConnection, count: int) -> float:
    start = time.perf_counter()
    waiting = set()
    for n in range(count):
        task_uuid = str(uuid.uuid4())
        waiting.add(task_uuid)
        raw.ws.send(_task_frame(task_uuid, f"catalogue item {n}"))
    while waiting:
        frame = raw.recv_json()
        for image in frame.get("newImages", {}).get("images", ()):
            waiting.discard(image["taskUUID"])
    return time.perf_counter() - start


def _ours_run(client: Any, count: int, threads_seen: list[int]) -> float:
    prompts = [f"catalogue item {n}" for n in range(count)]
    start = time.perf_counter()
    results = client.map(client.text2img, prompts, max_in_flight=count)
    first = next(results)  # every task is in flight by now
    threads_seen.append(sum(t.name.startswith("diffusionmaster-") for t in threading.enumerate()))
    done = 1 + sum(1 for _ in results)
    elapsed = time.perf_counter() - start
    assert done == count and first
    return elapsed


def _memory_per_task(client: Any, emu: EmulatorProcess, count: int) -> float:
    emu.command("withhold")
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    batch = client.batch(max_in_flight=count)
    futures = [batch.submit(client.text2img, f"m{n}") for n in range(count)]
    while client._supervisor.in_flight < count:  # all registered and sent
        time.sleep(0.01)
    after = tracemalloc.take_snapshot()
    tracemalloc.stop()
    grown = sum(s.size_diff for s in after.compare_to(before, "filename"))
    emu.command("release")
    for future in futures:
        future.result(60)
    return grown / count


def run(quick: bool) -> CaseResult:
    rounds, sizes = (1, (20,)) if quick else (4, (200, 1000))
    result = CaseResult(NAME, TITLE)
    with EmulatorProcess() as emu, make_client(emu.url) as client:
        emu.command(f"latency {LATENCY}")
        raw = RawConnection(emu.url)
        try:
            for count in sizes:
                threads_seen: list[int] = []
                samples = interleave(
                    {
                        "ours": functools.partial(_ours_run, client, count, threads_seen),
                        "raw": functools.partial(_raw_run, raw, count),
                    },
                    rounds,
                )
                emu.command("clear")
                ours, base = summary(samples["ours"]), summary(samples["raw"])
                result.details[f"{count} tasks"] = {
                    "unit": "s", "ours": ours, "raw": base, "library threads": max(threads_seen),
                }  # fmt: skip
                result.rows.append(
                    ratio_row(f"{count} tasks, median wall time", ours["median"],
                              base["median"], "s", 1.25)
                )  # fmt: skip
                result.notes.append(
                    f"{count} tasks: {max(threads_seen)} diffusionmaster threads in the process "
                    f"while they were in flight."
                )
            count = sizes[-1]
            per_task = _memory_per_task(client, emu, count)
            result.details["memory per task in flight"] = {"unit": "bytes", "value": per_task}
            result.notes.append(
                f"Memory per task in flight: {per_task:,.0f} bytes (tracemalloc, {count} tasks, "
                "frames withheld, futures and encoded frames included)."
            )
        finally:
            raw.close()
    result.notes.append(f"{rounds} runs per side and size, alternating; {LATENCY:g} s per image.")
    return result
