"""Golden frames: for the same inputs, our client sends what the official legacy SDK sends.

For each task both clients support, the SDK (runware==0.1.5, in a subprocess) and our
Client run against the same emulator, and the frames the emulator received from each
(``Emulator.received_frames()``) are compared as JSON values (so key order and
whitespace do not count; JSON types do: ``7`` is not ``7.0``), except for:

* every UUID (``taskUUID``, ``imageUUID``, ``connectionSessionUUID``...): each client
  makes its own;
* the fields the SDK always sends with a fixed value, :data:`SDK_FIXED_FIELDS`, left
  out of a frame when they hold exactly that value;
* ``{"ping": true}``, which the SDK sends whenever its 5 s timer says: compared once,
  in its own test.

Image-to-image, inpainting, ControlNet and preprocessing are not here: the SDK never
sends those frames (see test_sdk_bugs.py). Upscale and background removal are: the
SDK sends them and breaks only on the reply.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

import diffusionmaster
from diffusionmaster.testing import Emulator
from tests.conftest import API_KEY, make_client, seconds
from tests.interop.conftest import Frame, LegacySDK, keys

pytestmark = pytest.mark.interop

#: Fields the official SDK sends in every ``newTask`` with a fixed value whatever the
#: inputs (runware 0.1.5 base.py:228-242), and ``useCache``, null whenever the caller
#: leaves it unset. Our client sends ``offset`` 0 too; it omits the others and so
#: leaves them to the server (protocol.md §3: no ``schedulerId`` means the model's own
#: scheduler, ``gScale`` defaults to 7.5, a null optional field is an absent one).
SDK_FIXED_FIELDS: dict[str, dict[str, Any]] = {
    "newTask": {"offset": 0, "schedulerId": 22, "gScale": 7, "useCache": None},
}
CONNECT = {"op": "connect"}
LORA = "civitai:132942@146296"

Ours = Callable[[diffusionmaster.Client, dict[str, Path]], object]

#: id -> (the SDK's steps after connecting, the same inputs through our client). A step
#: value "{png}", "{jpg}" or "{webp}" is the path of such a file (the SDK uploads paths).
CASES: dict[str, tuple[list[Frame], Ours]] = {
    "authentication": ([], lambda client, files: None),
    "text2img-defaults": (
        [{"op": "images", "prompt": "a cozy hut in the woods", "size": 7, "model": 25}],
        lambda client, files: client.text2img("a cozy hut in the woods", size=7, model=25),
    ),
    "text2img-options": (
        [{"op": "images", "prompt": "a beautiful sunset over the ocean",
          "negative": "cloudy, rainy", "n": 3, "size": 1, "model": 13, "steps": 25,
          "seed": 1234, "use_cache": False}],
        lambda client, files: client.text2img(
            "a beautiful sunset over the ocean", negative_prompt="cloudy, rainy",
            number_results=3, size=1, model=13, steps=25, seed=1234, use_cache=False,
        ),
    ),
    "text2img-unicode": (  # the SDK escapes non-ASCII (\u00e9), we send UTF-8: same JSON
        [{"op": "images", "prompt": "un café à Paris, 夜", "negative": "pluie"}],
        lambda client, files: client.text2img("un café à Paris, 夜", negative_prompt="pluie"),
    ),
    "text2img-use-cache": (
        [{"op": "images", "prompt": "a red fox", "n": 2, "size": 11, "model": 4,
          "use_cache": True}],
        lambda client, files: client.text2img(
            "a red fox", number_results=2, size=11, model=4, use_cache=True
        ),
    ),
    "text2img-lora": (  # the SDK sends a LoRA only when given as a plain dict
        [{"op": "images", "prompt": "a knight", "lora_dicts": [[LORA, 0.8]]}],
        lambda client, files: client.text2img(
            "a knight", lora=[diffusionmaster.Lora(LORA, 0.8)]
        ),
    ),
    "upload": (
        [{"op": "upload", "image": "{png}"}],
        lambda client, files: client.upload_image(files["png"]),
    ),
    "upload-jpeg": (
        [{"op": "upload", "image": "{jpg}"}],
        lambda client, files: client.upload_image(files["jpg"]),
    ),
    "upload-webp": (
        [{"op": "upload", "image": "{webp}"}],
        lambda client, files: client.upload_image(files["webp"]),
    ),
    "image2text": (
        [{"op": "image_to_text", "image": "{png}"}],
        lambda client, files: client.image2text(files["png"]),
    ),
    "enhance-defaults": (
        [{"op": "enhance", "prompt": "a cat"}],
        lambda client, files: client.enhance_prompt("a cat"),
    ),
    "enhance-options": (
        [{"op": "enhance", "prompt": "a dog", "versions": 3, "max_length": 64,
          "language": 23}],
        lambda client, files: client.enhance_prompt(
            "a dog", versions=3, max_length=64, language_id=23
        ),
    ),
    "upscale": (
        [{"op": "upscale", "image": "{png}", "factor": 3}],
        lambda client, files: client.upscale(files["png"], 3),
    ),
    "remove-background": (
        [{"op": "remove_background", "image": "{png}"}],
        lambda client, files: client.remove_background(files["png"]),
    ),
}  # fmt: skip


def _is_uuid(value: object) -> bool:
    try:
        return isinstance(value, str) and str(uuid.UUID(value)) == value
    except ValueError:
        return False


def _without_uuids(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _without_uuids(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_without_uuids(item) for item in value]
    return "<uuid>" if _is_uuid(value) else value


def comparable(frames: list[Frame]) -> str:
    """The frames as canonical JSON, without pings, UUIDs and the SDK's fixed fields."""
    out = []
    for frame in frames:
        if frame == {"ping": True}:
            continue
        (key,) = frame
        body = dict(frame[key])
        for field, fixed in SDK_FIXED_FIELDS.get(key, {}).items():
            if field in body and json.dumps(body[field]) == json.dumps(fixed):
                del body[field]
        out.append({key: _without_uuids(body)})
    return json.dumps(out, sort_keys=True, indent=1)


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    """The same 64x48 picture as PNG, JPEG and WEBP files, by extension."""
    picture = Image.new("RGB", (64, 48), "teal")
    paths = {ext: tmp_path / f"teal.{ext}" for ext in ("png", "jpg", "webp")}
    for path in paths.values():
        picture.save(path)
    return paths


def _with_files(steps: list[Frame], files: dict[str, Path]) -> list[Frame]:
    def value(v: Any) -> Any:
        return str(files[v[1:-1]]) if isinstance(v, str) and v[1:-1] in files else v

    return [{key: value(v) for key, v in step.items()} for step in steps]


@pytest.mark.parametrize("case", list(CASES))
def test_same_frames_as_the_sdk(
    emulator: Emulator, sdk: LegacySDK, files: dict[str, Path], case: str
) -> None:
    """For the same inputs our client sends the SDK's frames (but UUIDs and fixed fields)."""
    steps, ours = CASES[case]
    sdk.run([CONNECT, *_with_files(steps, files)])
    sdk_frames = emulator.received_frames()
    emulator.clear_received()
    with make_client(emulator) as client:
        ours(client, files)
    assert comparable(emulator.received_frames()) == comparable(sdk_frames)


def test_sdk_fixed_fields(emulator: Emulator, sdk: LegacySDK) -> None:
    """The SDK's newTask carries offset 0, schedulerId 22, gScale 7 and useCache null unasked."""
    steps, _ = CASES["text2img-defaults"]
    sdk.run([CONNECT, *steps])
    (frame,) = [f["newTask"] for f in emulator.received_frames() if "newTask" in f]
    fixed = {field: frame[field] for field in SDK_FIXED_FIELDS["newTask"]}
    assert json.dumps(fixed) == json.dumps(SDK_FIXED_FIELDS["newTask"])  # 7, not 7.0


def test_same_heartbeat_frame_as_the_sdk(emulator: Emulator, sdk: LegacySDK) -> None:
    """Our heartbeat frame is the SDK's ``{"ping": true}``."""
    sdk.run([CONNECT])
    sdk_ping = emulator.received_frames()[1]
    emulator.clear_received()
    heartbeat = diffusionmaster.Heartbeat(interval=0.05)
    with make_client(emulator, heartbeat=heartbeat):
        assert emulator.wait_for(lambda: "ping" in keys(emulator.received_frames()), seconds(5))
    assert emulator.received_frames()[1] == sdk_ping == {"ping": True}


def test_same_resume_frame_as_the_sdk(emulator: Emulator, sdk: LegacySDK) -> None:
    """After a drop both clients resume with the key and the session UUID, nothing else."""
    second_login = lambda: keys(emulator.received_frames()).count("newConnection") == 2  # noqa: E731
    running = sdk.start([CONNECT, {"op": "wait_for_line"}])
    assert emulator.wait_for(lambda: emulator.received_count == 2, seconds(5))  # login, ping
    emulator.drop_connections()
    assert emulator.wait_for(second_login, seconds(5))
    running.send_line()
    sdk_session = running.finish().session
    sdk_resume = [f for f in emulator.received_frames() if "newConnection" in f][1]
    emulator.clear_received()
    with make_client(emulator) as client:
        emulator.drop_connections()
        assert emulator.wait_for(second_login, seconds(5))
        our_session = client.session_uuid
    our_resume = [f for f in emulator.received_frames() if "newConnection" in f][1]
    assert sdk_resume == {
        "newConnection": {"apiKey": API_KEY, "connectionSessionUUID": sdk_session}
    }
    assert our_resume == {
        "newConnection": {"apiKey": API_KEY, "connectionSessionUUID": our_session}
    }
