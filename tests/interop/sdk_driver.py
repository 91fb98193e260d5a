"""Drive the official legacy SDK (``runware==0.1.5``) through a list of steps.

Run by the SDK's own interpreter (``tools.legacy_sdk.python()``), never imported by
the test process: the SDK pins ``websockets==12.0``, prints to stdout, calls
``exit()`` on some errors and can hot-spin its event loop forever. Usage::

    python sdk_driver.py URL API_KEY STEPS_JSON TIMEOUT

``STEPS_JSON`` is a JSON list of steps, each an object with an ``op`` (see
``OPS``, plus ``wait_for_pongs`` with a ``count``) and that op's arguments. The steps run in order on one SDK client and
stop at the first one that raises. The driver then writes ONE JSON line to
stdout and ends the process with ``os._exit``::

    {"outcome": "done" | "failed" | "watchdog" | "stopped",
     "session": <the SDK's connectionSessionUUID>,
     "results": [{"op": ..., "ok": true, "value": ...}
                 | {"op": ..., "ok": false, "type": <exception class>, "error": <str>}],
     "pongs": [<seconds from the SDK's construction to each pong it read>, ...]}

Guards (each one answers a failure seen in the SDK, see .cache/runware-notes.md):
the SDK's ``print`` calls go to stderr so stdout stays parseable; a watchdog
thread ends the process after ``TIMEOUT`` seconds even when the event loop is
stuck in the SDK's busy loop (``asyncio.wait_for`` cannot fire then); the
result is written with ``os._exit`` because ``asyncio.run``'s teardown can
block on sockets the SDK abandoned; a ``SystemExit`` from the SDK's ``exit()``
is reported as outcome ``stopped``.
"""

import asyncio
import dataclasses
import json
import logging
import os
import sys
import threading

REAL_STDOUT = sys.stdout
sys.stdout = sys.stderr  # the SDK print()s on error paths; stdout carries only our JSON line

from runware import Runware  # noqa: E402
from runware.types import (  # noqa: E402
    ILora,
    IPromptEnhancer,
    IRemoveImageBackground,
    IRequestImage,
    IRequestImageToText,
    IUpscaleGan,
)

_emitted = threading.Lock()


def emit(report, code):
    """Write the report line and end the process at once (first caller wins)."""
    if not _emitted.acquire(blocking=False):
        return
    REAL_STDOUT.write(json.dumps(report) + "\n")
    REAL_STDOUT.flush()
    sys.stderr.flush()
    os._exit(code)


def plain(value):
    """The SDK's return value as JSON data (its types are dataclasses)."""
    if isinstance(value, list):
        return [plain(item) for item in value]
    if dataclasses.is_dataclass(value):
        return dataclasses.asdict(value)
    return value


def image_request(step):
    # "lora" builds the SDK's own ILora objects; "lora_dicts" passes plain dicts instead
    # (not its documented type, but the only form its json.dumps can send).
    lora = [ILora(modelId=m, weight=w) for m, w in step.get("lora", [])]
    lora += [{"modelId": m, "weight": w} for m, w in step.get("lora_dicts", [])]
    return IRequestImage(
        positive_prompt=step["prompt"],
        image_size=step.get("size", 1),
        model_id=step.get("model", 13),
        number_of_images=step.get("n", 1),
        negative_prompt=step.get("negative"),
        use_cache=step.get("use_cache"),
        steps=step.get("steps"),
        seed=step.get("seed"),
        image_initiator=step.get("image"),
        image_mask_initiator=step.get("mask"),
        lora=lora,
    )


async def wait_for_line():
    """Block (without blocking the loop) until the test writes a line to stdin."""
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)


OPS = {
    "connect": lambda rw, step: rw.connect(),
    "images": lambda rw, step: rw.requestImages(image_request(step)),
    "upload": lambda rw, step: rw.uploadImage(step["image"]),
    "image_to_text": lambda rw, step: rw.requestImageToText(
        IRequestImageToText(image_initiator=step["image"])
    ),
    "enhance": lambda rw, step: rw.enhancePrompt(
        IPromptEnhancer(
            prompt=step["prompt"],
            prompt_versions=step.get("versions"),
            prompt_max_length=step.get("max_length"),
            prompt_language_id=step.get("language"),
        )
    ),
    "upscale": lambda rw, step: rw.upscaleGan(
        IUpscaleGan(image_initiator=step["image"], upscale_factor=step["factor"])
    ),
    "remove_background": lambda rw, step: rw.removeImageBackground(
        IRemoveImageBackground(image_initiator=step["image"])
    ),
    "wait_for_line": lambda rw, step: wait_for_line(),
}


async def run(url, api_key, steps, report):
    # The SDK sets the root logger to this level and adds handlers (stderr) on construction.
    rw = Runware(api_key=api_key, url=url, log_level=logging.CRITICAL)
    loop = asyncio.get_running_loop()
    started = loop.time()
    pong = asyncio.Event()

    def on_pong(message):
        report["pongs"].append(round(loop.time() - started, 3))
        pong.set()

    # Our own listener beside the SDK's (which only keeps the last pong time): every
    # listener sees every frame, so this records each {"pong": true} the SDK reads.
    rw.addListener(check=lambda message: message.get("pong"), lis=on_pong)

    async def wait_for_pongs(count):
        while len(report["pongs"]) < count:
            pong.clear()
            await pong.wait()

    ops = dict(OPS, wait_for_pongs=lambda rw, step: wait_for_pongs(step["count"]))
    for step in steps:
        try:
            value = await ops[step["op"]](rw, step)
        except Exception as exc:
            report["results"].append(
                {"op": step["op"], "ok": False, "type": type(exc).__name__, "error": str(exc)}
            )
            report["outcome"] = "failed"
            break
        report["results"].append({"op": step["op"], "ok": True, "value": plain(value)})
    else:
        report["outcome"] = "done"
    report["session"] = rw._connectionSessionUUID
    emit(report, 0)


def main():
    url, api_key, steps, timeout = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), sys.argv[4]
    report = {"outcome": None, "session": None, "results": [], "pongs": []}

    def watchdog():
        report["outcome"] = "watchdog"
        emit(report, 3)

    timer = threading.Timer(float(timeout), watchdog)
    timer.daemon = True
    timer.start()
    try:
        asyncio.run(run(url, api_key, steps, report))
    except BaseException as exc:  # SystemExit from the SDK's exit() in one of its tasks
        report["outcome"] = "stopped"
        report["results"].append({"op": None, "ok": False, "type": type(exc).__name__,
                                  "error": str(exc)})  # fmt: skip
        emit(report, 1)
    report["outcome"] = "stopped"
    emit(report, 1)


if __name__ == "__main__":
    main()
