"""Run by the legacy SDK's interpreter (``runware==0.1.5``): one call per command line.

Never imported, and never imports diffusionmaster: ``bench.legacy`` starts it as
``<sdk python> bench/legacy_driver.py URL API_KEY LIMIT_SECONDS``. It connects, prints
``{"ready": true, ...}``, then for each ``call`` line on stdin makes one sequential
``requestImages`` (text-to-image, one result) and prints
``{"ok": true, "elapsed": <seconds>}``. ``quit`` (or end of input) ends it.

Guards, from .cache/runware-notes.md: the SDK's ``print`` calls go to stderr so stdout
carries only our lines; a watchdog thread ends the process after LIMIT_SECONDS even
when the SDK hot-spins its event loop (``asyncio.wait_for`` cannot fire then); the
process ends with ``os._exit``, since ``asyncio.run``'s teardown can hang on sockets
the SDK abandoned; the caller also kills it on any overrun.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
import threading
import time
from typing import Any, NoReturn

REAL_STDOUT = sys.stdout
sys.stdout = sys.stderr  # the SDK print()s on error paths

_lock = threading.Lock()


def emit(report: dict[str, Any]) -> None:
    with _lock:
        REAL_STDOUT.write(json.dumps(report) + "\n")
        REAL_STDOUT.flush()


def finish(report: dict[str, Any], code: int) -> NoReturn:
    emit(report)
    sys.stderr.flush()
    os._exit(code)


async def main(url: str, api_key: str) -> None:
    from runware import IRequestImage, Runware  # type: ignore[import-not-found,unused-ignore]

    loop = asyncio.get_running_loop()
    started = time.perf_counter()
    sdk = Runware(api_key=api_key, url=url, log_level=logging.CRITICAL)
    await asyncio.wait_for(sdk.connect(), 10)
    emit({"ready": True, "connect_s": time.perf_counter() - started})
    while True:
        line = await loop.run_in_executor(None, sys.stdin.readline)
        command = line.strip()
        if command != "call":
            finish({"bye": True}, 0)
        request = IRequestImage(
            positive_prompt="a lighthouse at dawn", image_size=1, model_id=13, number_of_images=1
        )
        start = time.perf_counter()
        images = await asyncio.wait_for(sdk.requestImages(request), 30)
        elapsed = time.perf_counter() - start
        emit({"ok": len(images) == 1, "elapsed": elapsed})


def run() -> None:
    url, api_key, limit = sys.argv[1], sys.argv[2], float(sys.argv[3])
    watchdog = threading.Timer(limit, finish, ({"ok": False, "error": "watchdog"}, 3))
    watchdog.daemon = True
    watchdog.start()
    try:
        asyncio.run(main(url, api_key))
    except BaseException as exc:  # SystemExit from the SDK's exit() included
        finish({"ok": False, "error": f"{type(exc).__name__}: {exc}"}, 1)
    finish({"ok": False, "error": "the event loop ended"}, 1)


if __name__ == "__main__":
    run()
