"""The official legacy SDK (runware==0.1.5) against our emulator: the paths that work in it.

Each test runs the SDK in a subprocess (see conftest.py) and asserts on what the SDK
returns, checked against what the emulator received, holds and serves.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from diffusionmaster.testing import Emulator
from diffusionmaster.testing._tasks import enhanced_prompts
from tests.conftest import API_KEY, seconds
from tests.interop.conftest import LegacySDK, fetch, keys, task_frames

pytestmark = pytest.mark.interop

CONNECT = {"op": "connect"}
COST = 0.0013  # the emulator's cost per generated image (documented in Emulator)


def test_authentication_yields_the_emulator_session(emulator: Emulator, sdk: LegacySDK) -> None:
    """The SDK authenticates with its key alone and keeps the session UUID the emulator made."""
    run = sdk.run([CONNECT])
    assert run.outcome == "done"
    assert emulator.session_uuids() == [run.session]
    assert emulator.received_frames()[0] == {"newConnection": {"apiKey": API_KEY}}


def test_text_to_image_one_result(emulator: Emulator, sdk: LegacySDK) -> None:
    """One text-to-image result comes back as the emulator produced and serves it."""
    run = sdk.run([CONNECT, {"op": "images", "prompt": "a cozy hut in the woods", "size": 7}])
    (image,) = run.value(1)
    (task,) = task_frames(emulator.received_frames(), "newTask")
    assert image == {
        "imageSrc": f"{emulator.http_url}/image/{image['imageUUID']}.jpg",
        "imageUUID": image["imageUUID"],
        "taskUUID": task["taskUUID"],
        "bNSFWContent": False,
        "cost": COST,
        "imageAltText": "a cozy hut in the woods",
    }
    assert emulator.image_count == 1
    content_type, picture = fetch(image["imageSrc"])
    assert (content_type, picture.size) == ("image/jpeg", (896, 512))


def test_text_to_image_several_results_over_several_frames(
    emulator: Emulator, sdk: LegacySDK
) -> None:
    """Three images sent as frames of 2 and 1 all come back, distinct, for the one task."""
    emulator.images_per_frame = 2
    steps = [CONNECT, {"op": "images", "prompt": "sunset", "negative": "rain", "n": 3, "seed": 7}]
    images = sdk.run(steps).value(1)
    (task,) = task_frames(emulator.received_frames(), "newTask")
    assert [(i["taskUUID"], i["imageAltText"], i["cost"]) for i in images] == [
        (task["taskUUID"], "sunset", COST)
    ] * 3
    uuids = [image["imageUUID"] for image in images]
    assert len(set(uuids)) == 3 and emulator.image_count == 3
    assert [fetch(i["imageSrc"])[1].size for i in images] == [(512, 512)] * 3
    assert emulator.results_sent == 2


def test_upload_image(emulator: Emulator, sdk: LegacySDK, png: Path) -> None:
    """An uploaded file comes back as the emulator's new image UUID, URL and the task's UUID."""
    uploaded = sdk.run([CONNECT, {"op": "upload", "image": str(png)}]).value(1)
    (task,) = task_frames(emulator.received_frames(), "newImageUpload")
    assert uploaded == {
        "newImageUUID": uploaded["newImageUUID"],
        "newImageSrc": f"{emulator.http_url}/image/{uploaded['newImageUUID']}.png",
        "taskUUID": task["taskUUID"],
    }
    content_type, picture = fetch(uploaded["newImageSrc"])
    assert (content_type, picture.size, picture.getpixel((0, 0))) == (
        "image/png", (64, 48), (0, 128, 128)
    )  # fmt: skip


def test_image_to_text(emulator: Emulator, sdk: LegacySDK, png: Path) -> None:
    """Image-to-text uploads the file, asks for the caption of that upload and returns it."""
    caption = sdk.run([CONNECT, {"op": "image_to_text", "image": str(png)}]).value(1)
    (request,) = task_frames(emulator.received_frames(), "newReverseImageClip")
    assert caption == {"task_uuid": request["taskUUID"], "text": "an image of 64x48 pixels"}
    assert emulator.image_count == 1  # the upload: the caption is of the image it made
    assert fetch(f"{emulator.http_url}/image/{request['imageUUID']}.png")[1].size == (64, 48)


def test_prompt_enhancement(emulator: Emulator, sdk: LegacySDK) -> None:
    """Three enhanced versions sent one per frame come back in order for the task."""
    steps = [CONNECT, {"op": "enhance", "prompt": "a cat", "versions": 3, "max_length": 64}]
    texts = sdk.run(steps).value(1)
    (request,) = task_frames(emulator.received_frames(), "newPromptEnhance")
    assert texts == [
        {"task_uuid": request["taskUUID"], "text": text}
        for text in enhanced_prompts("a cat", 3, 64)
    ]
    assert emulator.results_sent == 3


def test_heartbeat_keeps_the_connection(emulator: Emulator, sdk: LegacySDK) -> None:
    """Our pongs pass the SDK's 5 s heartbeat check: it pings again on the same link."""
    run = sdk.run([CONNECT, {"op": "wait_for_pongs", "count": 2}])
    assert run.outcome == "done"
    assert keys(emulator.received_frames()) == ["newConnection", "ping", "ping"]
    assert emulator.connections_opened == 1
    assert emulator.session_uuids() == [run.session]
    assert len(run.pongs) == 2  # the SDK read an answer to each ping


def test_resume_after_the_emulator_drops_the_connection(emulator: Emulator, sdk: LegacySDK) -> None:
    """After a drop the SDK resumes its session and gets the results buffered meanwhile."""
    emulator.withhold_frames()  # no result may be on the wire when the link drops
    running = sdk.start([CONNECT, {"op": "images", "prompt": "a lighthouse", "n": 2}])
    assert emulator.wait_for(lambda: "newTask" in keys(emulator.received_frames()), seconds(5))
    (session,) = emulator.session_uuids()
    emulator.drop_connections()
    assert emulator.wait_for(
        lambda: emulator.connections_opened == 2 and emulator.sessions[session].connected,
        timeout=seconds(5),
    )
    # Both images wait in the session's buffer for the resume.
    assert emulator.wait_for(lambda: emulator.sessions[session].buffered == 2, seconds(5))
    emulator.release_frames()
    run = running.finish()
    assert emulator.wait_for(lambda: emulator.received_count == 5, timeout=seconds(5))
    frames = emulator.received_frames()
    assert frames[3] == {"newConnection": {"apiKey": API_KEY, "connectionSessionUUID": session}}
    assert keys(frames) == ["newConnection", "ping", "newTask", "newConnection", "ping"]
    task_uuid = frames[2]["newTask"]["taskUUID"]
    images = run.value(1)
    assert [image["taskUUID"] for image in images] == [task_uuid, task_uuid]
    assert len({image["imageUUID"] for image in images}) == 2 and emulator.image_count == 2
    assert run.session == session and emulator.session_uuids() == [session]
