"""Case 2, throughput with many callers: 16 and 64 threads sharing one Client.

Each window runs for a fixed time; requests per second = calls completed / time
until the last caller returned. The baseline is the raw websocket-client loop in
one thread (one request in flight at a time, as a plain loop does). Windows of
both sides alternate. Target: >= 1.3x the raw loop's requests per second.
"""

from __future__ import annotations

import functools
import threading
import time
from typing import Any

from bench._common import (
    CaseResult,
    EmulatorProcess,
    RawConnection,
    interleave,
    make_client,
    ratio_row,
    raw_enhance,
    summary,
)

NAME = "throughput"
TITLE = "Throughput, many callers (enhance_prompt, one shared Client)"
PROMPT = "a lighthouse at dawn"
THREADS = (16, 64)


def _client_window(client: Any, threads: int, seconds: float) -> float:
    """Run ``threads`` callers for ``seconds``; return requests per second."""
    counts = [0] * threads
    errors: list[BaseException] = []
    ready = threading.Barrier(threads + 1)
    deadline = [0.0]

    def caller(index: int) -> None:
        ready.wait()
        end = deadline[0]
        done = 0
        try:
            while time.perf_counter() < end:
                client.enhance_prompt(PROMPT)
                done += 1
        except BaseException as exc:
            errors.append(exc)
        counts[index] = done

    workers = [threading.Thread(target=caller, args=(i,), daemon=True) for i in range(threads)]
    for worker in workers:
        worker.start()
    start = time.perf_counter()
    deadline[0] = start + seconds
    ready.wait()
    for worker in workers:
        worker.join()
    elapsed = time.perf_counter() - start
    if errors:
        raise errors[0]
    return sum(counts) / elapsed


def _raw_window(raw: RawConnection, seconds: float) -> float:
    start = time.perf_counter()
    end = start + seconds
    done = 0
    while time.perf_counter() < end:
        raw_enhance(raw, PROMPT)
        done += 1
    return done / (time.perf_counter() - start)


def run(quick: bool) -> CaseResult:
    rounds, seconds = (1, 0.1) if quick else (6, 1.0)
    result = CaseResult(NAME, TITLE)
    with EmulatorProcess() as emu, make_client(emu.url) as client:
        raw = RawConnection(emu.url)
        try:
            for _ in range(50):  # warm up both connections and the server
                client.enhance_prompt(PROMPT)
                raw_enhance(raw, PROMPT)
            for threads in THREADS:
                samples = interleave(
                    {
                        "ours": functools.partial(_client_window, client, threads, seconds),
                        "raw": functools.partial(_raw_window, raw, seconds),
                    },
                    rounds,
                )
                emu.command("clear")
                ours, base = summary(samples["ours"]), summary(samples["raw"])
                result.details[f"{threads} threads"] = {
                    "unit": "requests/s",
                    "ours": ours,
                    "raw": base,
                }
                result.rows.append(
                    ratio_row(
                        f"{threads} threads, median",
                        ours["median"],
                        base["median"],
                        "req/s",
                        1.3,
                        higher=True,
                    )
                )
        finally:
            raw.close()
    result.notes.append(
        f"{rounds} windows of {seconds:g} s per side and thread count, alternating; "
        "the raw loop is single-threaded (one request in flight)."
    )
    return result
