"""Case 5, resume: from a dropped connection to a waiting call's completion.

A call waits for its result while the server holds it in the session's buffer
(``withhold``); then the server drops every connection and stops holding. The
time is taken from the drop command to the call's return: the client notices the
drop, reconnects at once (the first attempt is immediate), resumes the session,
and the buffered result completes the call. The baseline is a bare connect +
authenticate (``newConnection`` and its answer) with websocket-client on loopback.
Rounds alternate. Target: ours <= baseline + 50 ms.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from bench._common import (
    CaseResult,
    EmulatorProcess,
    RawConnection,
    Row,
    interleave,
    make_client,
    summary,
)

NAME = "resume"
TITLE = "Resume after a dropped connection (result buffered by the server)"
PROMPT = "a lighthouse in a storm"
MARGIN_MS = 50.0


def _resume_once(emu: EmulatorProcess, client: Any) -> float:
    done: list[float] = []
    failed: list[BaseException] = []

    def call() -> None:
        try:
            client.text2img(PROMPT)
            done.append(time.perf_counter())
        except BaseException as exc:
            failed.append(exc)

    emu.command("withhold")
    caller = threading.Thread(target=call, daemon=True)
    caller.start()
    emu.command("wait_buffered 1 10")
    start = time.perf_counter()
    emu.command("drop_release")
    caller.join(30)
    if failed:
        raise failed[0]
    if not done:
        raise TimeoutError("the call did not complete within 30 s of the drop")
    return done[0] - start


def _bare_connect(url: str) -> float:
    start = time.perf_counter()
    raw = RawConnection(url)
    elapsed = time.perf_counter() - start
    raw.close()
    return elapsed


def run(quick: bool) -> CaseResult:
    rounds = 3 if quick else 30
    result = CaseResult(NAME, TITLE)
    with EmulatorProcess() as emu, make_client(emu.url) as client:
        session = client.session_uuid
        samples = interleave(
            {"ours": lambda: _resume_once(emu, client), "bare": lambda: _bare_connect(emu.url)},
            rounds,
            warmup=1,
        )
        if client.session_uuid != session:
            result.notes.append("unexpected: the session changed during the case")
    ours = {k: v * 1e3 if k != "n" else v for k, v in summary(samples["ours"]).items()}
    bare = {k: v * 1e3 if k != "n" else v for k, v in summary(samples["bare"]).items()}
    result.details = {"unit": "ms", "ours": ours, "bare": bare}
    for stat in ("median", "p99"):
        delta = ours[stat] - bare[stat]
        result.rows.append(
            Row(
                f"{stat}, drop to result",
                ours[stat],
                bare[stat],
                "ms",
                delta,
                f"<= +{MARGIN_MS:g} ms",
                delta <= MARGIN_MS,
                kind="delta",
            )
        )
    result.notes.append(
        f"{rounds} resumes, alternating with bare connects; the drop is sent to the server "
        "process over a pipe, which is inside our time."
    )
    return result
