"""Case 3, large results: a 10 MB and a 50 MB base64 image until ``Image.read()``.

Ours: ``client.text2img(..., return_base64=True)[0].read()``. The floor: the same
``newTask`` frame sent with websocket-client, the result frame received, then
``json.loads`` and ``base64.b64decode``: the least work any client can do. Both
include the server's time to make and send the frame (the same for both).
Target: <= 1.2x the floor.

Peak memory is measured in a fresh child process per side and size (one call,
``tracemalloc`` peak of the call; peak RSS growth, VmHWM, in another child as a
cross-check), and divided by the frame size. Target: <= 3.5x the frame.
"""

from __future__ import annotations

import base64
import functools
import json
import sys
import time
import tracemalloc
import uuid
from pathlib import Path
from typing import Any

from bench._common import (
    CaseResult,
    EmulatorProcess,
    RawConnection,
    Row,
    interleave,
    make_client,
    ratio_row,
    run_json,
    summary,
    timed,
)

NAME = "large"
TITLE = "Large results (base64 image until Image.read())"
PROMPT = "a very large lighthouse"
MB = 1 << 20


def task_frame(task_uuid: str) -> str:
    """The ``newTask`` frame the client sends for ``text2img(PROMPT, return_base64=True)``."""
    body = {
        "taskUUID": task_uuid,
        "taskType": 1,
        "promptText": PROMPT,
        "numberResults": 1,
        "modelId": 13,
        "sizeId": 1,
        "offset": 0,
        "returnBase64Image": True,
    }
    return json.dumps({"newTask": body}, separators=(",", ":"))


def floor_call(raw: RawConnection) -> tuple[bytes, int]:
    """The floor: send, receive the result frame, json.loads, b64decode. Returns (bytes, frame size)."""
    task_uuid = str(uuid.uuid4())
    raw.ws.send(task_frame(task_uuid))
    while True:
        text = raw.ws.recv()
        size = len(text)
        frame = json.loads(text)
        del text  # the floor keeps nothing it does not need
        images = frame.get("newImages", {}).get("images", ())
        if images and images[0]["taskUUID"] == task_uuid:
            encoded = images[0]["imageBase64Data"]
            del frame, images
            return base64.b64decode(encoded), size


def ours_call(client: Any) -> bytes:
    (image,) = client.text2img(PROMPT, return_base64=True)
    data: bytes = image.read()
    return data


def _check(data: bytes, size: int) -> None:
    if len(data) != size:
        raise AssertionError(f"got {len(data)} bytes, expected {size}")


def _ours_checked(client: Any, size: int) -> None:
    _check(ours_call(client), size)


def _floor_checked(raw: RawConnection, size: int) -> None:
    _check(floor_call(raw)[0], size)


# -- memory, in a child process ------------------------------------------------------


def _status(field: str) -> int:
    """A memory figure of this process from /proc/self/status, in bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def _rss_reset() -> int:
    """Reset the peak-RSS mark (VmHWM) to the current RSS and return the current RSS.

    ``ru_maxrss`` cannot serve: Linux carries it over from the parent process.
    """
    Path("/proc/self/clear_refs").write_text("5")
    return _status("VmRSS")


def _child(side: str, url: str, size: int, method: str) -> dict[str, Any]:
    """Make one call of ``side`` and report its peak memory (bytes) by ``method``."""
    client = make_client(url) if side == "ours" else None
    raw = RawConnection(url) if side == "floor" else None
    try:
        if method == "tracemalloc":
            tracemalloc.start()
            before = tracemalloc.get_traced_memory()[0]
        else:
            before = _rss_reset()
        if side == "ours":
            data = ours_call(client)
        else:
            assert raw is not None
            data, _ = floor_call(raw)
        if method == "tracemalloc":
            peak = tracemalloc.get_traced_memory()[1] - before
            tracemalloc.stop()
        else:
            peak = _status("VmHWM") - before
        _check(data, size)
        return {"peak": peak}
    finally:
        if client is not None:
            client.close()
        if raw is not None:
            raw.close()


def _peak(side: str, url: str, size: int, method: str) -> int:
    argv = [sys.executable, "-m", "bench.large_results", side, url, str(size), method]
    peak: int = run_json(argv, timeout=60)["peak"]
    return peak


# -- the case ---------------------------------------------------------------------------


def run(quick: bool) -> CaseResult:
    plan = [(1 * MB, 1)] if quick else [(10 * MB, 20), (50 * MB, 6)]
    result = CaseResult(NAME, TITLE)
    with EmulatorProcess() as emu, make_client(emu.url, timeout=60) as client:
        raw = RawConnection(emu.url)
        try:
            for size, rounds in plan:
                emu.command(f"image_bytes {size}")
                _, frame_size = floor_call(raw)  # warm up; learn the frame size
                samples = interleave(
                    {
                        "ours": timed(functools.partial(_ours_checked, client, size)),
                        "floor": timed(functools.partial(_floor_checked, raw, size)),
                    },
                    rounds,
                    warmup=1,
                )
                label = f"{size // MB} MB"
                ours, base = summary(samples["ours"]), summary(samples["floor"])
                memory = {
                    (side, method): _peak(side, emu.url, size, method)
                    for side in ("ours", "floor")
                    for method in ("tracemalloc", "rss")
                }
                result.details[label] = {
                    "unit": "s",
                    "frame_bytes": frame_size,
                    "ours": ours,
                    "floor": base,
                    "peak_bytes": {f"{side} {method}": v for (side, method), v in memory.items()},
                }
                result.rows.append(
                    ratio_row(
                        f"{label} median", ours["median"] * 1e3, base["median"] * 1e3, "ms", 1.2
                    )
                )
                peak_ours = memory[("ours", "tracemalloc")]
                peak_floor = memory[("floor", "tracemalloc")]
                result.rows.append(
                    Row(
                        f"{label} peak memory / frame",
                        peak_ours / frame_size,
                        peak_floor / frame_size,
                        "x frame",
                        peak_ours / frame_size,
                        "<= 3.5x",
                        peak_ours / frame_size <= 3.5,
                        kind="absolute",
                    )
                )
        finally:
            raw.close()
    result.notes.append(
        "Memory: tracemalloc peak of one call in a fresh child process per side, over the "
        "frame's size; peak RSS growth (VmHWM) of the same call (other children) in details."
    )
    return result


if __name__ == "__main__":
    _side, _url, _size, _method = sys.argv[1:5]
    started = time.perf_counter()
    report = _child(_side, _url, int(_size), _method)
    report["seconds"] = time.perf_counter() - started
    print(json.dumps(report))
