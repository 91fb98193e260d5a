"""Tests of diffusionmaster.testing.Emulator, driven by a raw WebSocket client.

These tests speak the wire protocol directly (websockets' sync client), never
through diffusionmaster.Client: they pin the emulator to protocol.md.
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import pathlib
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from PIL import Image
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import ClientConnection, connect

from diffusionmaster.testing import Emulator, ErrorId, SessionInfo
from tests.conftest import seconds

KEY = "test-key"
TIMEOUT = seconds(5)  # upper bound of every wait; tests finish as soon as the event happens

Frame = dict[str, Any]
Dial = Callable[[Emulator], ClientConnection]


# ---------------------------------------------------------------- helpers


@pytest.fixture
def emu() -> Iterator[Emulator]:
    """A default emulator, closed after the test."""
    with Emulator([KEY]) as emulator:
        yield emulator


@pytest.fixture
def dial() -> Iterator[Dial]:
    """Open raw client connections, all closed after the test."""
    with contextlib.ExitStack() as stack:

        def open_connection(emulator: Emulator) -> ClientConnection:
            return stack.enter_context(
                connect(emulator.url, max_size=None, open_timeout=TIMEOUT, close_timeout=seconds(1))
            )

        yield open_connection


def send(ws: ClientConnection, frame: Frame) -> None:
    ws.send(json.dumps(frame))


def recv(ws: ClientConnection, timeout: float = TIMEOUT) -> Frame:
    frame: Frame = json.loads(ws.recv(timeout=timeout))
    return frame


def login(ws: ClientConnection, key: str = KEY, session: str | None = None) -> str:
    body = {"apiKey": key}
    if session is not None:
        body["connectionSessionUUID"] = session
    send(ws, {"newConnection": body})
    reply = recv(ws)
    uuid_: str = reply["newConnectionSessionUUID"]["connectionSessionUUID"]
    return uuid_


def server_close(ws: ClientConnection) -> tuple[int, str] | None:
    """Read until the server ends the connection; return its close (code, reason), or
    None when it closed TCP without a close frame."""
    with pytest.raises(ConnectionClosed) as info:
        while True:
            ws.recv(timeout=TIMEOUT)
    close = info.value.rcvd
    return None if close is None else (close.code, close.reason)


def new_task(**fields: Any) -> Frame:
    body: Frame = {
        "taskUUID": str(uuid.uuid4()),
        "taskType": 1,
        "promptText": "a red fox in the snow -no people",
        "numberResults": 1,
        "modelId": 13,
        "sizeId": 1,
    }
    body.update(fields)
    return {"newTask": body}


def task_uuid(frame: Frame) -> str:
    value: str = next(iter(frame.values()))["taskUUID"]
    return value


def png_data_uri(size: tuple[int, int], colour: str = "teal", mode: str = "RGB") -> str:
    buffer = io.BytesIO()
    Image.new(mode, size, colour).save(buffer, "PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def upload(ws: ClientConnection, data_uri: str) -> str:
    tid = str(uuid.uuid4())
    send(ws, {"newImageUpload": {"imageBase64": data_uri, "taskUUID": tid, "taskType": 7}})
    reply = recv(ws)["newUploadedImageUUID"]
    assert reply["taskUUID"] == tid
    image_uuid: str = reply["newImageUUID"]
    return image_uuid


def generate(ws: ClientConnection, **fields: Any) -> Frame:
    frame = new_task(**fields)
    send(ws, frame)
    item: Frame = recv(ws)["newImages"]["images"][0]
    assert item["taskUUID"] == task_uuid(frame)
    return item


def fetch(url: str) -> tuple[str, bytes]:
    with urllib.request.urlopen(url, timeout=TIMEOUT) as response:
        return response.headers["Content-Type"], response.read()


def fetch_image(url: str) -> tuple[str, Image.Image]:
    content_type, data = fetch(url)
    return content_type, Image.open(io.BytesIO(data))


# ---------------------------------------------------------------- lifecycle


def test_start_binds_a_port_and_close_joins_every_thread() -> None:
    """The emulator listens on 127.0.0.1 at /v1/ and leaves no thread behind after close."""
    emulator = Emulator()
    with emulator:
        assert emulator.url == f"ws://127.0.0.1:{emulator.port}/v1/"
        assert emulator.http_url == f"http://127.0.0.1:{emulator.port}"
        assert any(t.name == "diffusionmaster-emulator" for t in threading.enumerate())
    emulator.close()  # idempotent
    assert [t.name for t in threading.enumerate() if t.name.startswith("diffusionmaster")] == []


def test_settings_reject_invalid_values() -> None:
    """Negative times and images_per_frame < 1 raise ValueError."""
    with pytest.raises(ValueError):
        Emulator(latency=-1.0)
    emulator = Emulator()
    with pytest.raises(ValueError):
        emulator.images_per_frame = 0
    with pytest.raises(RuntimeError):
        emulator.drop_connections()


# ---------------------------------------------------------------- connection and session


def test_known_key_gets_a_new_session_uuid(emu: Emulator, dial: Dial) -> None:
    """newConnection with a known key is answered with a fresh session UUID."""
    session = login(dial(emu))
    assert uuid.UUID(session).version == 4
    assert emu.session_uuids() == [session]
    assert emu.received_frames() == [{"newConnection": {"apiKey": KEY}}]


def test_unknown_key_gets_error_19_then_close_1008(emu: Emulator, dial: Dial) -> None:
    """An unknown key gets the errorId 19 frame, then a 1008 close."""
    ws = dial(emu)
    send(ws, {"newConnection": {"apiKey": "wrong"}})
    assert recv(ws) == {"error": True, "errorId": 19, "errorMessage": "Invalid API key"}
    assert server_close(ws) == (1008, "Invalid API key")
    assert emu.session_uuids() == []


def test_task_before_authentication_gets_error_19_then_close_1008(
    emu: Emulator, dial: Dial
) -> None:
    """A task as first frame gets errorId 19 (not authenticated) and a 1008 close."""
    ws = dial(emu)
    send(ws, new_task())
    error = recv(ws)
    assert (error["errorId"], "taskUUID" in error) == (19, False)
    assert error["errorMessage"] == "Invalid API key: the first frame must be newConnection"
    assert server_close(ws) == (1008, "Invalid API key")


def test_second_new_connection_on_a_connection_gets_409(emu: Emulator, dial: Dial) -> None:
    """newConnection on an authenticated connection is refused and the connection kept."""
    ws = dial(emu)
    login(ws)
    send(ws, {"newConnection": {"apiKey": KEY}})
    assert recv(ws) == {
        "error": True,
        "errorId": 409,
        "errorMessage": "newConnection: already authenticated",
    }
    send(ws, {"ping": True})
    assert recv(ws) == {"pong": True}


def test_resume_gets_same_uuid_then_buffered_frames_in_order(emu: Emulator, dial: Dial) -> None:
    """Resuming in the window returns the same UUID, then every buffered frame in order."""
    ws = dial(emu)
    session = login(ws)
    emu.withhold_frames()
    first, second = new_task(numberResults=2), new_task()
    send(ws, first)
    assert emu.wait_for(lambda: emu.sessions[session].buffered == 2, TIMEOUT)
    send(ws, second)
    assert emu.wait_for(lambda: emu.sessions[session].buffered == 3, TIMEOUT)
    ws.close()
    assert emu.wait_for(lambda: not emu.sessions[session].connected, TIMEOUT)
    emu.release_frames()
    ws2 = dial(emu)
    assert login(ws2, session=session) == session
    frames = [recv(ws2) for _ in range(3)]
    assert [f["newImages"]["images"][0]["taskUUID"] for f in frames] == [
        task_uuid(first),
        task_uuid(first),
        task_uuid(second),
    ]
    assert emu.wait_for(lambda: emu.sessions[session].buffered == 0, TIMEOUT)


def test_task_running_at_disconnect_is_buffered_for_resume(dial: Dial) -> None:
    """A task still running when the client leaves completes into the session buffer."""
    with Emulator([KEY], latency=0.2) as emu:
        ws = dial(emu)
        session = login(ws)
        task = new_task()
        send(ws, task)
        ws.close()
        assert emu.wait_for(
            lambda: not emu.sessions[session].connected and emu.sessions[session].buffered == 1,
            TIMEOUT,
        )
        ws2 = dial(emu)
        assert login(ws2, session=session) == session
        assert recv(ws2)["newImages"]["images"][0]["taskUUID"] == task_uuid(task)


def test_unknown_session_uuid_gets_a_new_session(emu: Emulator, dial: Dial) -> None:
    """A connectionSessionUUID the server does not hold opens a new session."""
    stale = str(uuid.uuid4())
    session = login(dial(emu), session=stale)
    assert session != stale
    assert emu.session_uuids() == [session]


def test_session_of_another_key_is_not_resumed(dial: Dial) -> None:
    """A session UUID of another key is not resumable with this key."""
    with Emulator(["a", "b"]) as emu:
        session = login(dial(emu), key="a")
        other = login(dial(emu), key="b", session=session)
        assert other != session


def test_expired_resume_window_gives_a_different_uuid(dial: Dial) -> None:
    """After resume_window without a connection the session is forgotten."""
    with Emulator([KEY], resume_window=0.2) as emu:
        ws = dial(emu)
        session = login(ws)
        ws.close()
        assert emu.wait_for(lambda: emu.session_uuids() == [], TIMEOUT)
        new = login(dial(emu), session=session)
        assert new != session
        assert emu.session_uuids() == [new]


def test_take_over_closes_the_old_connection_and_delivers_to_the_new(
    emu: Emulator, dial: Dial
) -> None:
    """Resuming a connected session closes the older connection; results go to the new one."""
    old = dial(emu)
    session = login(old)
    new = dial(emu)
    assert login(new, session=session) == session
    assert server_close(old) == (1000, "session resumed on another connection")
    assert emu.wait_for(lambda: emu.connection_count == 1, TIMEOUT)
    task = new_task()
    send(new, task)
    assert recv(new)["newImages"]["images"][0]["taskUUID"] == task_uuid(task)


def test_duplicate_task_uuid_is_run_once(emu: Emulator, dial: Dial) -> None:
    """A repeated taskUUID within a session is ignored: its results come once."""
    ws = dial(emu)
    session = login(ws)
    task = new_task(numberResults=2)
    send(ws, task)
    send(ws, task)
    assert emu.wait_for(lambda: emu.received_count == 3, TIMEOUT)
    frames = [recv(ws), recv(ws)]
    assert {f["newImages"]["images"][0]["taskUUID"] for f in frames} == {task_uuid(task)}

    # Every task done, nothing buffered, two frames sent in all: no second run.
    def info() -> SessionInfo:
        return emu.sessions[session]

    assert emu.wait_for(
        lambda: (info().running_tasks, info().buffered, emu.results_sent) == (0, 0, 2), TIMEOUT
    )
    assert info().seen_tasks == 1


def test_ping_gets_pong(emu: Emulator, dial: Dial) -> None:
    """{"ping": true} is answered with {"pong": true}, before and after authentication."""
    ws = dial(emu)
    send(ws, {"ping": True})
    assert recv(ws) == {"pong": True}
    login(ws)
    send(ws, {"ping": True})
    assert recv(ws) == {"pong": True}


def test_idle_connection_is_closed(dial: Dial) -> None:
    """The server closes a connection idle_timeout seconds after the client's last frame."""
    with Emulator([KEY], idle_timeout=seconds(0.2)) as emu:
        ws = dial(emu)
        session = login(ws)
        started = time.monotonic()
        assert server_close(ws) == (1000, "idle timeout")
        assert time.monotonic() - started >= 0.15
        assert emu.session_uuids() == [session]  # the session outlives its connection


def test_malformed_json_gets_error_400_and_keeps_the_connection(emu: Emulator, dial: Dial) -> None:
    """Invalid JSON is answered with an error without taskUUID; the connection stays usable."""
    ws = dial(emu)
    login(ws)
    ws.send("{not json")
    error = recv(ws)
    assert (error["errorId"], "taskUUID" in error) == (400, False)
    assert error["errorMessage"].startswith("frame: invalid JSON")
    send(ws, {"mystery": 1})
    assert recv(ws)["errorMessage"] == "frame: no known message key (got ['mystery'])"
    send(ws, {"ping": True})
    assert recv(ws) == {"pong": True}


# ---------------------------------------------------------------- tasks


def test_text_to_image_reply_shape(emu: Emulator, dial: Dial) -> None:
    """newTask taskType 1 answers a newImages frame with every documented field."""
    ws = dial(emu)
    login(ws)
    task = new_task(numberResults=1, offset=0, steps=20, gScale=7.5, seed=42, useCache=None)
    send(ws, task)
    frame = recv(ws)
    assert list(frame) == ["newImages"]
    assert frame["newImages"]["totalAvailableResults"] == 1
    [item] = frame["newImages"]["images"]
    assert item == {
        "imageSrc": f"{emu.http_url}/image/{item['imageUUID']}.jpg",
        "imageUUID": item["imageUUID"],
        "taskUUID": task_uuid(task),
        "bNSFWContent": False,
        "cost": 0.0013,
        "imageAltText": "a red fox in the snow",
    }


def test_generated_image_is_served_as_jpeg_of_the_requested_size(emu: Emulator, dial: Dial) -> None:
    """imageSrc is an HTTP URL on the same port returning a JPEG at the sizeId's size."""
    ws = dial(emu)
    login(ws)
    item = generate(ws, sizeId=2)
    content_type, image = fetch_image(item["imageSrc"])
    assert (content_type, image.format, image.size) == ("image/jpeg", "JPEG", (512, 768))


def test_unknown_image_url_is_404(emu: Emulator) -> None:
    """A GET of an image the server does not hold answers 404."""
    with pytest.raises(urllib.error.HTTPError) as info:
        fetch(f"{emu.http_url}/image/{uuid.uuid4()}.jpg")
    info.value.close()
    assert info.value.code == 404


def test_seed_increments_per_image(emu: Emulator, dial: Dial) -> None:
    """Image i of a task with seed s is the picture of seed s + i (deterministic rendering)."""
    ws = dial(emu)
    login(ws)
    send(ws, new_task(numberResults=2, seed=7))
    second = recv(ws)["newImages"]["images"][0]
    second = recv(ws)["newImages"]["images"][0]
    same = generate(ws, seed=8)
    assert fetch(second["imageSrc"])[1] == fetch(same["imageSrc"])[1]


def test_return_base64_image_carries_the_file(emu: Emulator, dial: Dial) -> None:
    """returnBase64Image adds imageBase64Data, the plain base64 of the served file."""
    ws = dial(emu)
    login(ws)
    item = generate(ws, returnBase64Image=True, sizeId=4)
    data = base64.b64decode(item["imageBase64Data"], validate=True)
    assert data == fetch(item["imageSrc"])[1]
    assert Image.open(io.BytesIO(data)).size == (768, 512)


def test_images_are_spread_over_frames(dial: Dial) -> None:
    """numberResults=8 with images_per_frame=3 arrives as frames of 3, 3 and 2 images."""
    with Emulator([KEY], images_per_frame=3) as emu:
        ws = dial(emu)
        login(ws)
        send(ws, new_task(numberResults=8))
        frames = [recv(ws)["newImages"] for _ in range(3)]
        assert [len(f["images"]) for f in frames] == [3, 3, 2]
        assert len({i["imageUUID"] for f in frames for i in f["images"]}) == 8
        assert emu.wait_for(lambda: emu.results_sent == 3, TIMEOUT)


def test_upload_is_stored_as_png_downscaled_to_2048(emu: Emulator, dial: Dial) -> None:
    """An upload answers newUploadedImageUUID; the file is a PNG at most 2048 px long."""
    ws = dial(emu)
    login(ws)
    tid = str(uuid.uuid4())
    send(ws, {"newImageUpload": {"imageBase64": png_data_uri((4096, 1024)), "taskUUID": tid}})
    reply = recv(ws)["newUploadedImageUUID"]
    assert reply == {
        "newImageUUID": reply["newImageUUID"],
        "newImageSrc": f"{emu.http_url}/image/{reply['newImageUUID']}.png",
        "taskUUID": tid,
    }
    content_type, image = fetch_image(reply["newImageSrc"])
    assert (content_type, image.format, image.size) == ("image/png", "PNG", (2048, 512))


def test_plain_base64_jpeg_upload_is_accepted(emu: Emulator, dial: Dial) -> None:
    """An upload may be plain base64 (no data URI) of a JPEG."""
    ws = dial(emu)
    login(ws)
    buffer = io.BytesIO()
    Image.new("RGB", (300, 200), "orange").save(buffer, "JPEG")
    image_uuid = upload(ws, base64.b64encode(buffer.getvalue()).decode())
    assert fetch_image(f"{emu.http_url}/image/{image_uuid}.png")[1].size == (300, 200)


def test_large_upload_over_10_mb_is_accepted(emu: Emulator, dial: Dial) -> None:
    """A 14 MB base64 upload fits in one frame and is stored."""
    ws = dial(emu)
    login(ws)
    noise = Image.frombytes("RGB", (1900, 1900), bytes(range(256)) * (1900 * 1900 * 3 // 256 + 1))
    buffer = io.BytesIO()
    noise.save(buffer, "PNG", compress_level=0)
    data_uri = "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()
    assert len(data_uri) > 10_000_000
    image_uuid = upload(ws, data_uri)
    assert fetch_image(f"{emu.http_url}/image/{image_uuid}.png")[1].size == (1900, 1900)


def test_image_to_image_inpainting_and_controlnet_use_the_requested_size(
    emu: Emulator, dial: Dial
) -> None:
    """Task types 2, 3, 9 and 10 accept uploaded images and render at the sizeId's size."""
    ws = dial(emu)
    login(ws)
    init = upload(ws, png_data_uri((640, 480)))
    mask = upload(ws, png_data_uri((640, 480), "white", "L"))
    control = [{"preprocessor": "canny", "weight": 1, "startStep": 0, "endStep": 20,
                "guideImageUUID": init, "controlMode": "controlnet"}]  # fmt: skip
    variants: list[Frame] = [
        {"taskType": 2, "imageInitiatorUUID": init},
        {"taskType": 3, "imageInitiatorUUID": init, "imageMaskInitiatorUUID": mask},
        {"taskType": 9, "controlNet": control},
        {"taskType": 10, "imageInitiatorUUID": init, "imageMaskInitiatorUUID": mask,
         "controlNet": control, "steps": 30},
    ]  # fmt: skip
    for fields in variants:
        item = generate(ws, sizeId=21, **fields)
        assert fetch_image(item["imageSrc"])[1].size == (960, 640), fields


def test_image_to_text_answers_the_prompt_or_the_size(emu: Emulator, dial: Dial) -> None:
    """newReverseImageClip answers newReverseClip: the prompt of a generated image, or its size."""
    ws = dial(emu)
    login(ws)
    generated = generate(ws)["imageUUID"]
    uploaded = upload(ws, png_data_uri((64, 48)))
    for image_uuid, text in [(generated, "a red fox in the snow"),
                             (uploaded, "an image of 64x48 pixels")]:  # fmt: skip
        tid = str(uuid.uuid4())
        send(ws, {"newReverseImageClip": {"imageUUID": image_uuid, "taskUUID": tid}})
        assert recv(ws) == {"newReverseClip": {"texts": [{"taskUUID": tid, "text": text}]}}


def test_upscale_resizes_by_the_factor(emu: Emulator, dial: Dial) -> None:
    """newUpscaleGan answers one image of the source size times upscaleFactor."""
    ws = dial(emu)
    login(ws)
    source = upload(ws, png_data_uri((100, 60)))
    tid = str(uuid.uuid4())
    send(ws, {"newUpscaleGan": {"imageUUID": source, "taskUUID": tid, "upscaleFactor": 3}})
    [item] = recv(ws)["newUpscaleGan"]["images"]
    assert item == {
        "imageSrc": f"{emu.http_url}/image/{item['imageUUID']}.png",
        "imageUUID": item["imageUUID"],
        "taskUUID": tid,
        "bNSFWContent": False,
    }
    content_type, image = fetch_image(item["imageSrc"])
    assert (content_type, image.size) == ("image/png", (300, 180))


def test_remove_background_gives_rgba_png_with_transparent_border(
    emu: Emulator, dial: Dial
) -> None:
    """newRemoveBackground answers an RGBA PNG of the source size, transparent at the corners."""
    ws = dial(emu)
    login(ws)
    source = generate(ws, sizeId=1)["imageUUID"]
    tid = str(uuid.uuid4())
    send(ws, {"newRemoveBackground": {"imageUUID": source, "taskUUID": tid, "taskType": 8}})
    [item] = recv(ws)["newRemoveBackground"]["images"]
    assert (item["taskUUID"], item["bNSFWContent"]) == (tid, False)
    content_type, image = fetch_image(item["imageSrc"])
    assert (content_type, image.format, image.mode, image.size) == (
        "image/png", "PNG", "RGBA", (512, 512),
    )  # fmt: skip
    alpha = image.getchannel("A")
    assert (alpha.getpixel((0, 0)), alpha.getpixel((256, 256))) == (0, 255)


def test_prompt_enhancer_sends_distinct_texts_over_frames(dial: Dial) -> None:
    """newPromptEnhance answers promptVersions distinct texts, images_per_frame per frame."""
    with Emulator([KEY], images_per_frame=2) as emu:
        ws = dial(emu)
        login(ws)
        tid = str(uuid.uuid4())
        send(ws, {"newPromptEnhance": {"prompt": "a close up of a", "taskUUID": tid,
                                       "promptMaxLength": 40, "promptVersions": 3,
                                       "promptLanguageId": 1}})  # fmt: skip
        frames = [recv(ws)["newPromptEnhancer"]["texts"] for _ in range(2)]
        assert [len(texts) for texts in frames] == [2, 1]
        texts = [t["text"] for f in frames for t in f]
        assert {t["taskUUID"] for f in frames for t in f} == {tid}
        assert len(set(texts)) == 3
        assert all(t.startswith("a close up of a") and len(t) <= 40 for t in texts)


def test_preprocess_replies_in_the_go_shape(emu: Emulator, dial: Dial) -> None:
    """newPreProcessControlNet answers the Go SDK's shape with a PNG derived from the guide."""
    ws = dial(emu)
    login(ws)
    guide = upload(ws, png_data_uri((320, 200)))
    tid = str(uuid.uuid4())
    send(ws, {"newPreProcessControlNet": {"taskUUID": tid, "taskType": 11,
                                          "preProcessorType": "canny", "guideImageUUID": guide,
                                          "width": 0, "height": 0, "lowThresholdCanny": 100,
                                          "highThresholdCanny": 200}})  # fmt: skip
    reply = recv(ws)["newPreProcessControlNet"]
    assert reply == {
        "newImageSrc": f"{emu.http_url}/image/{reply['newImageUUID']}.png",
        "newImageUUID": reply["newImageUUID"],
        "initImageUUID": guide,
        "nNsfwContent": False,
        "taskUUID": tid,
    }
    assert fetch_image(reply["newImageSrc"])[1].size == (320, 200)


def test_unknown_fields_are_ignored(emu: Emulator, dial: Dial) -> None:
    """Unknown fields inside a task and unknown top-level keys do not make an error."""
    ws = dial(emu)
    login(ws)
    task = new_task(futureField={"x": 1})
    task["extra"] = True
    send(ws, task)
    assert recv(ws)["newImages"]["images"][0]["taskUUID"] == task_uuid(task)


# ---------------------------------------------------------------- validation


@pytest.mark.parametrize(
    ("kind", "fields", "error_id", "message"),
    [
        ("newTask", {"numberResults": True}, 422, "numberResults: must be an integer, got true"),
        ("newTask", {"numberResults": 0}, 422, "numberResults: 0 is out of range (>= 1)"),
        ("newTask", {"promptText": " "}, 422, "promptText: must not be empty"),
        ("newTask", {"gScale": 10.5}, 422, "gScale: 10.5 is out of range (0..10)"),
        ("newTask", {"seed": 0}, 422, "seed: 0 is out of range (>= 1)"),
        ("newTask", {"clipSkip": 3}, 422, "clipSkip: 3 is out of range (0..2)"),
        ("newTask", {"offset": -1}, 422, "offset: -1 is out of range (>= 0)"),
        ("newTask", {"sizeId": 10}, 422, "sizeId: 10 is not one of 1, 2, 3, 4, 5, 6, 7, 8, 9, "
                                          "11, 16, 17, 20, 21"),
        ("newTask", {"modelId": 1}, 422, "modelId: 1 is not a known model "
                                          "(4, 13, 18, 19, 20, 22, 25 or AIR)"),
        ("newTask", {"schedulerId": 27}, 422, "schedulerId: 27 is not one of"),
        ("newTask", {"styleId": 0}, 422, "styleId: 0 is not one of"),
        ("newTask", {"promptLanguageId": 299}, 422, "promptLanguageId: 299 is out of range"),
        ("newTask", {"useCache": 1}, 422, "useCache: must be true or false, got 1"),
        ("newTask", {"taskType": 2}, 422, "imageInitiatorUUID: required for taskType 2"),
        ("newTask", {"taskType": 5}, 422, "taskType: 5 is not one of 1, 2, 3, 9, 10"),
        ("newTask", {"taskType": 9}, 422, "controlNet: at least one item required for taskType 9"),
        ("newTask", {"lora": [{"modelId": "civitai:1@2", "weight": 1.5}]}, 422,
         "lora[0].weight: 1.5 is out of range (0..1)"),
        ("newTask", {"lora": [{"modelId": "x", "weight": 1}]}, 422, "lora[0].modelId: \"x\" is "
                                                                    "not an AIR id"),
        ("newTask", {"imageInitiatorUUID": "00000000-0000-4000-8000-000000000000",
                     "taskType": 2}, 404, "imageInitiatorUUID: no image"),
        ("newTask", {"taskType": 9, "controlNet": [{"preprocessor": "sketch",
                                                    "guideImageUrl": "http://x/y.png"}]},
         422, "controlNet[0].preprocessor: \"sketch\" is not one of"),
        ("newTask", {"taskType": 9, "controlNet": [{"preprocessor": "canny", "weight": 2,
                                                    "guideImageUrl": "http://x/y.png"}]},
         422, "controlNet[0].weight: 2 is out of range (0..1)"),
        ("newUpscaleGan", {"upscaleFactor": 5}, 422, "imageUUID: required; "
                                                     "upscaleFactor: 5 is out of range (2..4)"),
        ("newPromptEnhance", {"prompt": "p", "promptVersions": 6}, 422,
         "promptVersions: 6 is out of range (1..5)"),
        ("newPromptEnhance", {"prompt": "p", "promptMaxLength": 381}, 422,
         "promptMaxLength: 381 is out of range (1..380)"),
        ("newPreProcessControlNet", {"preProcessorType": "edges"}, 422,
         "preProcessorType: \"edges\" is not one of"),
        ("newImageUpload", {"imageBase64": "data:image/png;base64,@@@"}, 415,
         "imageBase64: not valid base64"),
        ("newImageUpload", {"imageBase64": base64.b64encode(b"GIF89a....").decode()}, 415,
         "imageBase64: not a readable image"),
        ("newRemoveBackground", {"imageUUID": "nope", "taskType": 7}, 422,
         "taskType: must be 8 for newRemoveBackground, got 7; imageUUID: \"nope\" is not a UUID"),
    ],
)  # fmt: skip
def test_invalid_fields_get_an_error_with_the_task_uuid(
    emu: Emulator, dial: Dial, kind: str, fields: Frame, error_id: int, message: str
) -> None:
    """Every invalid field is answered with an error frame carrying the task's UUID."""
    ws = dial(emu)
    login(ws)
    body = new_task(**fields)["newTask"] if kind == "newTask" else dict(fields)
    body.setdefault("taskUUID", str(uuid.uuid4()))
    send(ws, {kind: body})
    error = recv(ws)
    assert (error["error"], error["errorId"], error["taskUUID"]) == (
        True,
        error_id,
        body["taskUUID"],
    )
    assert error["errorMessage"].startswith(message), error["errorMessage"]


def test_missing_task_uuid_gets_an_error_without_task_uuid(emu: Emulator, dial: Dial) -> None:
    """A task without taskUUID is answered with an error that carries none."""
    ws = dial(emu)
    login(ws)
    task = new_task()
    del task["newTask"]["taskUUID"]
    send(ws, task)
    assert recv(ws) == {"error": True, "errorId": ErrorId.INVALID_FIELD,
                        "errorMessage": "taskUUID: required"}  # fmt: skip


def test_images_of_another_key_are_not_found(dial: Dial) -> None:
    """An image UUID produced for one key is unknown to the sessions of another key."""
    with Emulator(["a", "b"]) as emu:
        ws_a, ws_b = dial(emu), dial(emu)
        login(ws_a, key="a")
        login(ws_b, key="b")
        image_uuid = generate(ws_a)["imageUUID"]
        send(ws_b, {"newUpscaleGan": {"imageUUID": image_uuid, "taskUUID": str(uuid.uuid4()),
                                      "upscaleFactor": 2}})  # fmt: skip
        assert recv(ws_b)["errorId"] == 404


# ---------------------------------------------------------------- fault injection


def test_drop_connections_aborts_without_close_frame_and_keeps_sessions(
    emu: Emulator, dial: Dial
) -> None:
    """drop_connections closes TCP without a close frame; the session stays resumable."""
    ws = dial(emu)
    session = login(ws)
    emu.drop_connections()
    assert server_close(ws) is None
    assert emu.wait_for(lambda: emu.connection_count == 0, TIMEOUT)
    assert login(dial(emu), session=session) == session


def test_drop_after_results_drops_after_n_frames_and_buffers_the_rest(
    emu: Emulator, dial: Dial
) -> None:
    """drop_after_results(2) lets two result frames through, then drops; the rest is buffered."""
    ws = dial(emu)
    session = login(ws)
    emu.drop_after_results(2)
    task = new_task(numberResults=4)
    send(ws, task)
    got = [recv(ws)["newImages"]["images"][0]["imageUUID"] for _ in range(2)]
    assert server_close(ws) is None
    ws2 = dial(emu)
    assert login(ws2, session=session) == session
    got += [recv(ws2)["newImages"]["images"][0]["imageUUID"] for _ in range(2)]
    assert len(set(got)) == 4


def test_restart_keeping_sessions_resumes_on_the_same_port(emu: Emulator, dial: Dial) -> None:
    """restart() drops connections and listens again on the same port with sessions kept."""
    port = emu.port
    ws = dial(emu)
    session = login(ws)
    emu.restart()
    assert server_close(ws) is None
    assert emu.port == port
    assert login(dial(emu), session=session) == session


def test_restart_forgetting_sessions_gives_a_new_uuid(emu: Emulator, dial: Dial) -> None:
    """restart(keep_sessions=False) forgets sessions: a resume gets a different UUID."""
    ws = dial(emu)
    session = login(ws)
    image = generate(ws)["imageSrc"]
    emu.restart(keep_sessions=False)
    assert login(dial(emu), session=session) != session
    assert fetch(image)[0] == "image/jpeg"  # images survive a restart


def test_expire_sessions_forgets_all_and_aborts_their_connections(
    emu: Emulator, dial: Dial
) -> None:
    """expire_sessions forgets every session and aborts its connection."""
    ws = dial(emu)
    session = login(ws)
    emu.expire_sessions()
    assert emu.session_uuids() == []
    assert server_close(ws) is None
    assert login(dial(emu), session=session) != session


def test_freeze_holds_everything_until_thaw(emu: Emulator, dial: Dial) -> None:
    """While frozen nothing is answered, not even control pings; thaw sends all in order."""
    ws = dial(emu)
    session = login(ws)
    emu.latency = 0.1  # the result is produced after the freeze
    task = new_task()
    send(ws, task)
    assert emu.wait_for(lambda: len(emu.received_frames()) == 2, TIMEOUT)
    emu.freeze()
    assert emu.wait_for(lambda: emu.sessions[session].buffered == 1, TIMEOUT)
    send(ws, {"ping": True})
    control_pong = ws.ping()
    with pytest.raises(TimeoutError):
        ws.recv(timeout=seconds(0.3))
    assert not control_pong.is_set()
    emu.thaw()
    assert recv(ws)["newImages"]["images"][0]["taskUUID"] == task_uuid(task)
    assert recv(ws) == {"pong": True}
    assert control_pong.wait(TIMEOUT)


def test_delay_frames_delays_each_result_frame(emu: Emulator, dial: Dial) -> None:
    """delay_frames(0.2) adds 0.2 s before each result frame, not before pongs."""
    ws = dial(emu)
    login(ws)
    emu.delay_frames(0.2)
    started = time.monotonic()
    send(ws, new_task())
    send(ws, {"ping": True})
    assert recv(ws) == {"pong": True}
    assert "newImages" in recv(ws)
    assert time.monotonic() - started >= 0.2
    emu.delay_frames(0)


def test_duplicate_frames_sends_each_result_frame_twice(emu: Emulator, dial: Dial) -> None:
    """duplicate_frames() sends every result frame twice, identical."""
    ws = dial(emu)
    login(ws)
    emu.duplicate_frames()
    send(ws, new_task())
    first, second = recv(ws), recv(ws)
    assert first == second
    assert emu.wait_for(lambda: emu.results_sent == 2, TIMEOUT)
    emu.duplicate_frames(False)
    send(ws, new_task())
    recv(ws)
    assert emu.wait_for(lambda: emu.results_sent == 3, TIMEOUT)


def test_withheld_frames_are_sent_in_order_on_release(emu: Emulator, dial: Dial) -> None:
    """withhold_frames holds result frames (not pongs) until release_frames."""
    ws = dial(emu)
    session = login(ws)
    emu.withhold_frames()
    tasks = [new_task(), new_task()]
    for task in tasks:
        send(ws, task)
    assert emu.wait_for(lambda: emu.sessions[session].buffered == 2, TIMEOUT)
    send(ws, {"ping": True})
    assert recv(ws) == {"pong": True}
    assert emu.results_sent == 0
    emu.release_frames()
    assert [recv(ws)["newImages"]["images"][0]["taskUUID"] for _ in tasks] == [
        task_uuid(t) for t in tasks
    ]


def test_revoked_key_is_refused_and_added_key_accepted(emu: Emulator, dial: Dial) -> None:
    """revoke_key makes the next newConnection fail with 19/1008; add_key accepts a new key."""
    emu.revoke_key(KEY)
    ws = dial(emu)
    send(ws, {"newConnection": {"apiKey": KEY}})
    assert recv(ws)["errorId"] == 19
    assert server_close(ws) == (1008, "Invalid API key")
    emu.add_key("fresh")
    assert emu.api_keys == frozenset({"fresh"})
    login(dial(emu), key="fresh")


def test_fail_next_task_answers_one_error_with_the_task_uuid(emu: Emulator, dial: Dial) -> None:
    """fail_next_task makes the next task answer an error frame; later tasks run normally."""
    ws = dial(emu)
    login(ws)
    emu.fail_next_task(503, "model overloaded")
    failed, fine = new_task(), new_task()
    send(ws, failed)
    assert recv(ws) == {"error": True, "errorId": 503, "errorMessage": "model overloaded",
                        "taskUUID": task_uuid(failed)}  # fmt: skip
    send(ws, fine)
    assert recv(ws)["newImages"]["images"][0]["taskUUID"] == task_uuid(fine)


def test_lose_next_task_swallows_one_task_and_a_resend_runs(emu: Emulator, dial: Dial) -> None:
    """lose_next_task drops the next task unanswered; re-sending its taskUUID then runs it."""
    ws = dial(emu)
    session = login(ws)
    emu.lose_next_task()
    task = new_task()
    send(ws, task)
    assert emu.wait_for(lambda: emu.received_count == 2, TIMEOUT)
    assert emu.sessions[session].seen_tasks == 0
    send(ws, task)
    assert recv(ws)["newImages"]["images"][0]["taskUUID"] == task_uuid(task)


# ---------------------------------------------------------------- observation


def test_observation_counts_connections_and_frames(emu: Emulator, dial: Dial) -> None:
    """connections_opened, connection_count, received_frames and clear_received track traffic."""
    ws = dial(emu)
    login(ws)
    send(ws, {"ping": True})
    recv(ws)
    assert emu.received_frames() == [{"newConnection": {"apiKey": KEY}}, {"ping": True}]
    emu.clear_received()
    assert emu.received_frames() == []
    ws.close()
    assert emu.wait_for(lambda: emu.connection_count == 0, TIMEOUT)
    dial(emu)
    assert emu.wait_for(lambda: emu.connection_count == 1, TIMEOUT)
    assert emu.connections_opened == 2


def test_drop_while_frozen_ends_the_connection_at_once(emu: Emulator, dial: Dial) -> None:
    """drop_connections works during a freeze and the server forgets the connection at once."""
    ws = dial(emu)
    session = login(ws)
    emu.freeze()
    emu.drop_connections()
    assert emu.wait_for(lambda: emu.connection_count == 0, TIMEOUT)
    assert emu.sessions[session].connected is False
    emu.thaw()
    assert server_close(ws) is None


def test_restart_keeps_running_tasks_and_buffers_their_results(dial: Dial) -> None:
    """A task in flight during restart() completes into the buffer of its kept session."""
    with Emulator([KEY], latency=0.2) as emu:
        ws = dial(emu)
        session = login(ws)
        task = new_task()
        send(ws, task)
        assert emu.wait_for(lambda: emu.sessions[session].running_tasks == 1, TIMEOUT)
        emu.restart()
        ws2 = dial(emu)
        assert login(ws2, session=session) == session
        assert recv(ws2)["newImages"]["images"][0]["taskUUID"] == task_uuid(task)


def test_ping_keeps_an_otherwise_idle_connection_open(dial: Dial) -> None:
    """{"ping": true} resets the idle clock: the connection outlives several idle_timeouts."""
    with Emulator([KEY], idle_timeout=seconds(0.3)) as emu:
        ws = dial(emu)
        login(ws)
        for _ in range(5):  # 5 x 0.1 s of silence from the server, well past 0.3 s in all
            with pytest.raises(TimeoutError):
                ws.recv(timeout=seconds(0.1))
            send(ws, {"ping": True})
            assert recv(ws) == {"pong": True}
        assert emu.connection_count == 1


def test_nsfw_flag_follows_check_nsfw_and_the_prompt(emu: Emulator, dial: Dial) -> None:
    """bNSFWContent is true only when checkNsfw is set and the prompt says nsfw."""
    ws = dial(emu)
    login(ws)
    assert generate(ws, promptText="nsfw test", checkNsfw=True)["bNSFWContent"] is True
    assert generate(ws, promptText="nsfw test")["bNSFWContent"] is False


def test_controlnet_guide_image_url_and_webp_upload_are_accepted(emu: Emulator, dial: Dial) -> None:
    """A WEBP upload is stored, and a ControlNet item may give guideImageUrl instead of a UUID."""
    ws = dial(emu)
    login(ws)
    buffer = io.BytesIO()
    Image.new("RGB", (80, 60), "purple").save(buffer, "WEBP")
    webp = upload(ws, "data:image/webp;base64," + base64.b64encode(buffer.getvalue()).decode())
    assert fetch_image(f"{emu.http_url}/image/{webp}.png")[1].size == (80, 60)
    control = [{"preprocessor": "depth_midas", "startStepPercentage": 0.0,
                "endStepPercentage": 0.5, "guideImageUrl": "https://example.com/guide.png"}]  # fmt: skip
    item = generate(ws, taskType=10, imageInitiatorUUID=webp, controlNet=control)
    assert fetch_image(item["imageSrc"])[1].size == (512, 512)


def test_binary_frame_gets_error_400(emu: Emulator, dial: Dial) -> None:
    """A binary frame is refused with an error without taskUUID; the connection stays."""
    ws = dial(emu)
    login(ws)
    ws.send(b'{"ping": true}')
    assert recv(ws) == {
        "error": True,
        "errorId": 400,
        "errorMessage": "frame: binary frames are not supported",
    }


def test_websocket_upgrade_outside_v1_is_refused(emu: Emulator) -> None:
    """Only /v1/ upgrades to WebSocket; another path answers HTTP 404."""
    with pytest.raises(InvalidStatus) as info:
        connect(emu.url.replace("/v1/", "/v2/"), open_timeout=TIMEOUT).close()
    assert info.value.response.status_code == 404


def test_start_on_a_busy_port_raises_and_leaves_no_thread(emu: Emulator) -> None:
    """Starting on a port in use raises OSError and stops the emulator's threads."""
    with pytest.raises(OSError), Emulator(port=emu.port):
        pass
    assert [t.name for t in threading.enumerate() if t.name.startswith("diffusionmaster")] == [
        "diffusionmaster-emulator"
    ]


@pytest.mark.slow
def test_serve_forever_runs_until_keyboard_interrupt() -> None:
    """serve_forever serves on the given port until SIGINT, then returns normally."""
    code = (  # a shell that started pytest in the background may have left SIGINT ignored
        "import signal\n"
        "signal.signal(signal.SIGINT, signal.default_int_handler)\n"
        "from diffusionmaster.testing import serve_forever\n"
        "serve_forever(0, ['cli-key'], on_ready=lambda emu: print(emu.url, flush=True))\n"
    )
    with subprocess.Popen(
        [sys.executable, "-c", code],
        stdout=subprocess.PIPE,
        text=True,
        cwd=str(pathlib.Path(__file__).resolve().parents[1]),
    ) as process:
        try:
            assert process.stdout is not None
            url = process.stdout.readline().strip()
            with connect(url, open_timeout=TIMEOUT) as ws:
                assert login(ws, key="cli-key")
            process.send_signal(signal.SIGINT)
            assert process.wait(timeout=TIMEOUT) == 0
        finally:
            process.kill()
