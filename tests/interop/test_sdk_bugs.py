"""Where the official legacy SDK (runware==0.1.5) breaks on its own, whatever the server does.

Each test shows one failure mode of the SDK, its cause in the SDK's source
(runware/base.py, types.py, server.py of 0.1.5), and how far the exchange with our
emulator got: what the emulator received, and that it answered every frame it got
(protocol.md §4-§5). These are not skipped nor xfail: a change in the SDK's behaviour
makes them fail, so the failure is seen.
"""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path

import pytest

from diffusionmaster.testing import Emulator
from tests.conftest import make_client, seconds
from tests.interop.conftest import LegacySDK, keys, task_frames

pytestmark = pytest.mark.interop

CONNECT = {"op": "connect"}
NO_NEW_IMAGE_UUID = (
    "AttributeError",
    "'UploadImageType' object has no attribute 'new_image_uuid'",
)
NO_COST = ("TypeError", "IImage.__init__() missing 1 required positional argument: 'cost'")


def test_image_to_image_fails_after_the_upload(
    emulator: Emulator, sdk: LegacySDK, png: Path
) -> None:
    """Image-to-image from a file dies on the upload reply (no ``new_image_uuid``): no newTask."""
    # base.py:169 reads uploaded_image.new_image_uuid; UploadImageType (types.py) names the
    # field newImageUUID. Our emulator got the upload and answered it.
    run = sdk.run([CONNECT, {"op": "images", "prompt": "a boat", "image": str(png)}])
    assert run.failure == NO_NEW_IMAGE_UUID
    assert keys(emulator.received_frames()) == ["newConnection", "ping", "newImageUpload"]
    assert (emulator.image_count, emulator.results_sent) == (1, 1)  # the upload was answered


def test_image_to_image_from_an_image_uuid_fails_before_sending(
    emulator: Emulator, sdk: LegacySDK
) -> None:
    """Image-to-image from an image UUID dies building a fake upload reply: nothing is sent."""
    # base.py:614 turns a UUID into UploadImageType(new_image_uuid=...), a keyword the
    # dataclass does not have, before any frame is sent.
    with make_client(emulator) as client:
        (source,) = client.text2img("a boat")
    emulator.clear_received()
    run = sdk.run([CONNECT, {"op": "images", "prompt": "a ship", "image": source.uuid}])
    assert run.failure == (
        "TypeError",
        "UploadImageType.__init__() got an unexpected keyword argument 'new_image_uuid'",
    )
    assert keys(emulator.received_frames()) == ["newConnection", "ping"]


def test_inpainting_fails_after_the_first_upload(
    emulator: Emulator, sdk: LegacySDK, png: Path
) -> None:
    """Inpainting dies on the image's upload reply (as image-to-image): the mask is never sent."""
    # base.py:169 again, before base.py:172-177 would upload the mask.
    steps = [CONNECT, {"op": "images", "prompt": "a door", "image": str(png), "mask": str(png)}]
    run = sdk.run(steps)
    assert run.failure == NO_NEW_IMAGE_UUID
    assert keys(emulator.received_frames()) == ["newConnection", "ping", "newImageUpload"]
    assert (emulator.image_count, emulator.results_sent) == (1, 1)


def test_lora_objects_cannot_be_sent(emulator: Emulator, sdk: LegacySDK) -> None:
    """A LoRA given as the SDK's own ``ILora`` makes its json.dumps fail: no newTask is sent."""
    # base.py:255 puts the ILora dataclass objects into the frame as they are.
    lora = [["civitai:132942@146296", 0.8]]
    run = sdk.run([CONNECT, {"op": "images", "prompt": "a knight", "lora": lora}])
    assert run.failure == ("TypeError", "Object of type ILora is not JSON serializable")
    assert keys(emulator.received_frames()) == ["newConnection", "ping"]


def test_lora_as_plain_dicts_works(emulator: Emulator, sdk: LegacySDK) -> None:
    """LoRAs passed as plain dicts (not the SDK's documented type) reach the emulator and work."""
    lora = [["civitai:132942@146296", 0.8]]
    run = sdk.run([CONNECT, {"op": "images", "prompt": "a knight", "lora_dicts": lora}])
    (task,) = task_frames(emulator.received_frames(), "newTask")
    assert task["lora"] == [{"modelId": "civitai:132942@146296", "weight": 0.8}]
    assert [image["taskUUID"] for image in run.value(1)] == [task["taskUUID"]]


def test_upscale_fails_on_a_correct_reply(emulator: Emulator, sdk: LegacySDK, png: Path) -> None:
    """Upscaling dies building its result from our reply: its IImage needs a ``cost``."""
    # base.py:518-525 builds IImage from the four fields of protocol.md §5 only, and
    # types.py:94 declares cost without a default: no reply can avoid the TypeError. It comes
    # after the SDK read those four fields of our reply (a missing one is a KeyError).
    run = sdk.run([CONNECT, {"op": "upscale", "image": str(png), "factor": 2}])
    assert run.failure == NO_COST
    frames = emulator.received_frames()
    assert keys(frames) == ["newConnection", "ping", "newImageUpload", "newUpscaleGan"]
    assert task_frames(frames, "newUpscaleGan")[0]["upscaleFactor"] == 2
    assert (emulator.image_count, emulator.results_sent) == (2, 2)  # upload and upscale answered


def test_remove_background_fails_on_a_correct_reply(
    emulator: Emulator, sdk: LegacySDK, png: Path
) -> None:
    """Background removal dies building its result from our reply, as upscaling does."""
    # base.py:450-457: the same IImage(...) without cost.
    run = sdk.run([CONNECT, {"op": "remove_background", "image": str(png)}])
    assert run.failure == NO_COST
    frames = emulator.received_frames()
    assert keys(frames) == ["newConnection", "ping", "newImageUpload", "newRemoveBackground"]
    assert task_frames(frames, "newRemoveBackground")[0]["taskType"] == 8
    assert (emulator.image_count, emulator.results_sent) == (2, 2)


def test_invalid_key_hangs_connect_until_killed(emulator: Emulator, sdk: LegacySDK) -> None:
    """After our errorId 19 and close 1008 the SDK's connect() never returns, so we kill it."""
    # server.py:70-76 records the error but never sets the event connect() waits on
    # (server.py:133, no timeout); ~5 s later its heartbeat loop spins without awaiting,
    # freezing the event loop (runware-notes.md §1): only a kill ends the process.
    running = sdk.start([CONNECT], key="wrong-key", watchdog=seconds(30))
    assert emulator.wait_for(  # refused and closed: from here on the SDK can only hang
        lambda: emulator.connections_opened == 1 and emulator.connection_count == 0,
        timeout=seconds(5),
    )
    with pytest.raises(subprocess.TimeoutExpired):
        running.finish(timeout=seconds(1))
    assert running.process.returncode == -signal.SIGKILL  # it never reported
    assert emulator.received_frames()[0] == {"newConnection": {"apiKey": "wrong-key"}}
    assert emulator.session_uuids() == []
