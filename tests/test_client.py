"""End-to-end tests of the Client against the emulator: real sockets on 127.0.0.1."""

from __future__ import annotations

import io
import threading
import time
from typing import Any

import pytest
from PIL import Image as PILImage

import diffusionmaster
from diffusionmaster import (
    AuthenticationError,
    ClientClosedError,
    InvalidArgumentError,
    RequestTimeoutError,
    State,
    TaskError,
)
from diffusionmaster.testing import Emulator

from .conftest import API_KEY, make_client, seconds


def _tasks(emu: Emulator, key: str = "newTask") -> list[dict[str, Any]]:
    return [f[key] for f in emu.received_frames() if key in f]


def test_text2img_one_result(client: diffusionmaster.Client, emulator: Emulator) -> None:
    """One image comes back with its UUID, URL and task UUID, and its bytes are a JPEG."""
    (image,) = client.text2img("a red fox", size=(512, 768), seed=5)
    (task,) = _tasks(emulator)
    assert image.task_uuid == task["taskUUID"]
    assert task["promptText"] == "a red fox"
    assert task["sizeId"] == 2
    assert image.url is not None and image.url.startswith(emulator.http_url)
    assert image.format == "jpeg"
    assert PILImage.open(io.BytesIO(image.read())).size == (512, 768)


def test_text2img_eight_results_over_several_frames() -> None:
    """Eight images sent three per frame arrive as eight distinct images."""
    with Emulator(api_keys=[API_KEY], images_per_frame=3) as emu, make_client(emu) as client:
        images = client.text2img("a fleet of boats", number_results=8)
        # the emulator counts a frame just after writing it: wait, don't race it
        assert emu.wait_for(lambda: emu.results_sent == 3, seconds(5))
    assert len({i.uuid for i in images}) == 8
    assert {i.task_uuid for i in images} == {images[0].task_uuid}


def test_repeated_frames_are_dropped() -> None:
    """When the server sends every frame twice, each image is still returned once."""
    with Emulator(api_keys=[API_KEY], images_per_frame=2) as emu, make_client(emu) as client:
        emu.duplicate_frames(True)
        images = client.text2img("twins", number_results=4)
    assert len(images) == 4
    assert len({i.uuid for i in images}) == 4


def test_base64_results_need_no_download(client: diffusionmaster.Client) -> None:
    """return_base64 delivers the bytes inside the result."""
    (image,) = client.text2img("inline", return_base64=True)
    assert image._content.cached
    assert PILImage.open(io.BytesIO(image.read())).size == (512, 512)


def test_32_threads_share_one_client(client: diffusionmaster.Client, emulator: Emulator) -> None:
    """32 threads on one client each receive exactly their own results."""
    emulator.images_per_frame = 1
    emulator.latency = 0.002
    results: dict[int, list[diffusionmaster.Image]] = {}
    errors: list[BaseException] = []

    def worker(n: int) -> None:
        try:
            results[n] = client.text2img(f"prompt number {n}", number_results=3)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(32)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(seconds(20))
    assert not errors
    sent = {task["taskUUID"]: task["promptText"] for task in _tasks(emulator)}
    assert len(results) == 32
    for n, images in results.items():
        assert len({i.uuid for i in images}) == 3
        (task_uuid,) = {i.task_uuid for i in images}
        assert sent[task_uuid] == f"prompt number {n}"


def test_session_uuid_exposed(client: diffusionmaster.Client, emulator: Emulator) -> None:
    """The client exposes the session UUID the server gave it."""
    assert client.state is State.CONNECTED
    assert client.session_uuid in emulator.session_uuids()


def test_invalid_key_fails_fast_without_retry(emulator: Emulator) -> None:
    """An invalid key raises AuthenticationError within 2 s and is not retried."""
    started = time.monotonic()
    with pytest.raises(AuthenticationError) as info:
        diffusionmaster.Client("wrong-key", url=emulator.url)
    assert time.monotonic() - started < 2
    assert info.value.error_id == 19
    assert emulator.connections_opened == 1


def test_missing_key_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without a key, the error names DIFFUSIONMASTER_API_KEY."""
    monkeypatch.delenv("DIFFUSIONMASTER_API_KEY", raising=False)
    with pytest.raises(InvalidArgumentError, match="DIFFUSIONMASTER_API_KEY"):
        diffusionmaster.Client(url="ws://127.0.0.1:9/")


def test_key_from_environment(monkeypatch: pytest.MonkeyPatch, emulator: Emulator) -> None:
    """The key falls back to the DIFFUSIONMASTER_API_KEY variable."""
    monkeypatch.setenv("DIFFUSIONMASTER_API_KEY", API_KEY)
    with diffusionmaster.Client(url=emulator.url) as client:
        assert client.state is State.CONNECTED


def test_unknown_environment() -> None:
    """An unknown environment lists the known ones."""
    with pytest.raises(
        InvalidArgumentError, match="environment: must be one of production, development"
    ):
        diffusionmaster.Client("k", environment="staging")


def test_environments_map_to_documented_endpoints() -> None:
    """The environments name the endpoints of protocol section 1."""
    assert diffusionmaster.ENDPOINTS == {
        "production": "wss://ws-api.diffusionmaster.com/v1/",
        "development": "wss://dev-ws-api.diffusionmaster.com/v1/",
    }


def test_unreachable_server_is_a_connection_error() -> None:
    """A server that is not there raises ConnectionFailedError, not an authentication error."""
    with Emulator(api_keys=[API_KEY]) as emu:
        url = emu.url
    with pytest.raises(diffusionmaster.ConnectionFailedError) as info:
        diffusionmaster.Client(API_KEY, url=url, connect_timeout=seconds(2))
    assert isinstance(info.value, ConnectionError)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"number_results": 0}, "number_results: must be an integer >= 1"),
        ({"guidance": 11}, "guidance: must be a number from 0 to 10"),
        ({"size": (300, 300)}, "size: unsupported size"),
        ({"model": 1}, "model: must be one of 4 (SDXL_V1_0)"),
        ({"scheduler": 0}, "scheduler: must be one of"),
        ({"style": 13}, "style: must be one of"),
        ({"seed": 0}, "seed: must be an integer >= 1"),
        ({"clip_skip": 3}, "clip_skip: must be an integer from 0 to 2"),
        ({"language_id": 299}, "language_id: must be an integer from 1 to 298"),
        ({"check_nsfw": "yes"}, "check_nsfw: must be True or False"),
        (
            {"lora": [diffusionmaster.Lora("civitai:1@2", 1.5)]},
            "lora[0].weight: must be a number from 0 to 1",
        ),
        ({"timeout": -1}, "timeout: must be seconds >= 0"),
    ],
)
def test_bad_arguments_send_nothing(
    client: diffusionmaster.Client, emulator: Emulator, kwargs: dict[str, Any], message: str
) -> None:
    """A bad argument raises InvalidArgumentError naming it, and nothing reaches the server."""
    with pytest.raises(InvalidArgumentError) as info:
        client.text2img("a cat", **kwargs)
    assert message in str(info.value)
    assert [list(f) for f in emulator.received_frames()] == [["newConnection"]]


def test_empty_prompt_sends_nothing(client: diffusionmaster.Client, emulator: Emulator) -> None:
    """An empty prompt is refused before sending."""
    with pytest.raises(InvalidArgumentError, match="prompt: must be a non-empty string"):
        client.text2img("")
    assert _tasks(emulator) == []


def test_negative_prompt_uses_no_convention(
    client: diffusionmaster.Client, emulator: Emulator
) -> None:
    """The negative prompt is appended with the -no convention."""
    client.text2img("a beach", negative_prompt="people, umbrellas")
    assert _tasks(emulator)[0]["promptText"] == "a beach -no people, umbrellas"


def test_server_task_error_is_task_error(
    client: diffusionmaster.Client, emulator: Emulator
) -> None:
    """A task error frame becomes TaskError carrying the task UUID, id and message."""
    emulator.fail_next_task(error_id=1234, message="model overloaded")
    with pytest.raises(TaskError) as info:
        client.text2img("anything")
    (task,) = _tasks(emulator)
    assert info.value.task_uuid == task["taskUUID"]
    assert info.value.error_id == 1234
    assert info.value.message == "model overloaded"


def test_emulator_validation_error_reaches_the_caller(client: diffusionmaster.Client) -> None:
    """An unknown image UUID is reported by the server as a TaskError for that task."""
    with pytest.raises(TaskError) as info:
        client.img2img("x", "11111111-2222-4333-8444-555555555555")
    assert info.value.task_uuid is not None
    assert "imageInitiatorUUID" in info.value.message


def test_deadline_raises_and_late_results_are_discarded(
    client: diffusionmaster.Client, emulator: Emulator
) -> None:
    """A passed deadline raises RequestTimeoutError; the late results leave nothing behind."""
    emulator.withhold_frames()
    with pytest.raises(RequestTimeoutError) as info:
        client.text2img("slow", timeout=seconds(0.2))
    assert isinstance(info.value, TimeoutError)
    (task,) = _tasks(emulator)
    assert info.value.task_uuid == task["taskUUID"]
    emulator.release_frames()
    assert emulator.wait_for(lambda: emulator.results_sent == 1, seconds(5))
    assert client._supervisor.in_flight == 0
    # the client still works, and the late image did not reach the next call
    (image,) = client.text2img("next")
    assert image.task_uuid != task["taskUUID"]


def test_close_wakes_waiting_calls(client: diffusionmaster.Client, emulator: Emulator) -> None:
    """close() with calls in flight wakes them at once with ClientClosedError."""
    emulator.withhold_frames()
    outcome: list[BaseException] = []
    done = threading.Event()

    def call() -> None:
        try:
            client.text2img("never", timeout=seconds(30))
        except BaseException as exc:
            outcome.append(exc)
        done.set()

    worker = threading.Thread(target=call)
    worker.start()
    assert emulator.wait_for(lambda: len(_tasks(emulator)) == 1, seconds(5))
    started = time.monotonic()
    client.close()
    assert done.wait(seconds(2))
    assert time.monotonic() - started < 1
    worker.join()
    assert len(outcome) == 1 and isinstance(outcome[0], ClientClosedError)


def test_close_is_idempotent_and_stops_threads(emulator: Emulator) -> None:
    """close() twice is fine, and no diffusionmaster thread survives it."""
    client = make_client(emulator)
    client.text2img("one")
    client.close()
    client.close()
    assert client.state is State.CLOSED
    alive = [
        t.name
        for t in threading.enumerate()
        if t.name.startswith("diffusionmaster-") and t.name != "diffusionmaster-emulator"
    ]
    assert alive == []
    with pytest.raises(ClientClosedError):
        client.text2img("after close")


@pytest.mark.slow
def test_forgotten_close_does_not_block_exit(emulator: Emulator) -> None:
    """A script that never closes its client still exits promptly."""
    import subprocess
    import sys

    script = (
        "import diffusionmaster\n"
        f"c = diffusionmaster.Client({API_KEY!r}, url={emulator.url!r})\n"
        "c.text2img('left open')\n"
        "print('done')\n"
    )
    started = time.monotonic()
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=seconds(20))  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "done"
    assert time.monotonic() - started < seconds(10)


def test_dropped_client_is_closed_when_collected(emulator: Emulator) -> None:
    """A client dropped without close() closes its connection once garbage-collected."""
    import gc

    client = make_client(emulator)
    client.text2img("then forgotten")
    assert emulator.connection_count == 1
    del client
    gc.collect()
    assert emulator.wait_for(lambda: emulator.connection_count == 0, seconds(5))
