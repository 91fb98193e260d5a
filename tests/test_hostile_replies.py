"""A hostile or broken server: frames that cannot be decoded, and malformed authentication
replies on the first connect and on a resume. Real client, real emulator, real sockets.

Frames are pushed with ``Emulator.send_raw`` and authentication replies replaced with
``Emulator.bad_auth_reply``. After each, the calls that follow must still get their
answers, and no thread of the client may have died.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from concurrent.futures import Future
from typing import Any

import pytest

import diffusionmaster
from diffusionmaster import Heartbeat, ProtocolError, State
from diffusionmaster.connection import SERVER_WARNINGS
from diffusionmaster.errors import ConnectionFailedError
from diffusionmaster.testing import Emulator

from .conftest import API_KEY, make_client, seconds

DEPTH = 200_000
DEEP = "[" * DEPTH + "]" * DEPTH


def _threads(name: str) -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == name and t.is_alive()]


def _lost_task(emu: Emulator, client: diffusionmaster.Client) -> tuple[Future[Any], str]:
    """Start a text2img the server swallows; return its future and task UUID."""
    emu.lose_next_task()
    before = emu.received_count
    future = client.submit(client.text2img, "a lost cat")
    assert emu.wait_for(lambda: emu.received_count > before, seconds(5))
    task_uuid = emu.received_frames()[-1]["newTask"]["taskUUID"]
    return future, str(task_uuid)


def _drop(emu: Emulator, client: diffusionmaster.Client) -> None:
    """Drop the connection and wait until the client has noticed (so no call is sent into it)."""
    noticed = threading.Event()
    client.add_state_listener(lambda state: state is not State.CONNECTED and noticed.set())
    emu.drop_connections()
    assert noticed.wait(seconds(5))


def _captions(emu: Emulator) -> int:
    return sum("newReverseImageClip" in f for f in emu.received_frames())


def _image_item(task_uuid: str, image_uuid: str) -> dict[str, Any]:
    return {"taskUUID": task_uuid, "imageUUID": image_uuid, "imageSrc": "http://127.0.0.1:9/x"}


# ---------------------------------------------------------------------------
# Frames that cannot be decoded
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        pytest.param(DEEP, id="nested-200000-deep"),
        pytest.param('{"newImages": ' + DEEP + "}", id="nested-inside-a-known-frame"),
        pytest.param("{not json", id="not-json"),
        pytest.param("[1, 2]", id="not-an-object"),
        pytest.param('{"newImages": {"images": 7}}', id="wrong-type"),
        pytest.param('{"pong": true, "x": ' + "1" * 5000 + "}", id="huge-integer"),
    ],
)
def test_bad_frame_keeps_the_connection_and_later_calls_answered(
    emulator: Emulator, client: diffusionmaster.Client, text: str
) -> None:
    """A frame that cannot be decoded is dropped; the connection stays and the next call works."""
    readers = _threads("diffusionmaster-reader")
    assert emulator.send_raw(text) == 1
    (image,) = client.text2img("a lighthouse", seed=3)
    assert image.uuid
    assert emulator.connections_opened == 1  # the reader survived: no reconnect
    assert _threads("diffusionmaster-reader") == readers
    assert client.state is State.CONNECTED


def test_bad_frame_is_logged(
    emulator: Emulator, client: diffusionmaster.Client, caplog: pytest.LogCaptureFixture
) -> None:
    """A frame that cannot be decoded is logged as a warning by the library's logger."""
    with caplog.at_level(logging.WARNING, logger="diffusionmaster"):
        emulator.send_raw(DEEP)
        client.text2img("a lighthouse", seed=3)
    messages = [r.getMessage() for r in caplog.records if r.name.startswith("diffusionmaster")]
    assert any("cannot be decoded" in m and "RecursionError" in m for m in messages), messages


def test_a_flood_of_bad_frames_costs_a_bounded_number_of_warnings(
    emulator: Emulator, client: diffusionmaster.Client, caplog: pytest.LogCaptureFixture
) -> None:
    """Past SERVER_WARNINGS per connection, warnings about the server's frames go to DEBUG."""
    frames = ["{not json", '{"error": true, "errorId": 7, "errorMessage": "flood"}'] * 20
    assert len(frames) > SERVER_WARNINGS
    with caplog.at_level(logging.DEBUG, logger="diffusionmaster"):
        for text in frames:
            assert emulator.send_raw(text) == 1
        (image,) = client.text2img("after the flood", seed=3)  # read after every bad frame
    assert image.uuid
    about = [
        r for r in caplog.records
        if "cannot be decoded" in r.getMessage() or "(errorId 7)" in r.getMessage()
    ]  # fmt: skip
    assert len(about) == len(frames)
    assert [r.levelno for r in about] == (
        [logging.WARNING] * SERVER_WARNINGS + [logging.DEBUG] * (len(frames) - SERVER_WARNINGS)
    )
    assert "logged at DEBUG" in about[SERVER_WARNINGS - 1].getMessage()
    assert emulator.connections_opened == 1


def test_undecodable_frame_naming_a_task_fails_it_at_once(emulator: Emulator) -> None:
    """A result frame with a mistyped field fails the task it names with ProtocolError at once."""
    with make_client(emulator, timeout=seconds(60)) as client:
        future, task_uuid = _lost_task(emulator, client)
        item = {"taskUUID": task_uuid, "imageUUID": 5}
        started = time.monotonic()
        emulator.send_raw(json.dumps({"newImages": {"images": [item]}}))
        with pytest.raises(ProtocolError, match=task_uuid) as info:
            future.result(timeout=seconds(5))
        assert time.monotonic() - started < seconds(5)
        assert "expected string, got int" in str(info.value)
        (image,) = client.text2img("next", seed=1)  # the next call is answered
        assert image.uuid


def test_unparseable_frame_naming_a_task_fails_it_at_once(emulator: Emulator) -> None:
    """A frame nested too deep to parse, that names a waiting task, fails that task at once."""
    with make_client(emulator, timeout=seconds(60)) as client:
        future, task_uuid = _lost_task(emulator, client)
        item = json.dumps({"taskUUID": task_uuid})[:-1] + ', "x": ' + DEEP + "}"
        text = '{"newImages": {"images": [' + item + "]}}"
        emulator.send_raw(text)
        with pytest.raises(ProtocolError, match="RecursionError") as info:
            future.result(timeout=seconds(5))
        assert task_uuid in str(info.value)
        assert emulator.connections_opened == 1
        (image,) = client.text2img("next", seed=1)
        assert image.uuid


def test_one_bad_item_keeps_the_valid_images_of_its_frame(emulator: Emulator) -> None:
    """In one frame, a bad item fails its own task and the valid item completes the other."""
    with make_client(emulator, timeout=seconds(60)) as client:
        good, good_uuid = _lost_task(emulator, client)
        bad, bad_uuid = _lost_task(emulator, client)
        items = [{"taskUUID": bad_uuid, "imageUUID": None}, _image_item(good_uuid, "img-1")]
        emulator.send_raw(json.dumps({"newImages": {"images": items}}))
        with pytest.raises(ProtocolError, match=bad_uuid):
            bad.result(timeout=seconds(5))
        (image,) = good.result(timeout=seconds(5))
        assert (image.uuid, image.task_uuid) == ("img-1", good_uuid)


def test_bad_text_item_fails_only_its_task(emulator: Emulator) -> None:
    """A caption frame with one mistyped text fails that task; the other gets its text."""
    with make_client(emulator, timeout=seconds(60)) as client:
        (image,) = client.text2img("a cat", seed=2)
        futures = []
        for count in range(2):
            emulator.lose_next_task()
            futures.append(client.submit(client.image2text, image))
            want = count + 1
            assert emulator.wait_for(lambda: _captions(emulator) == want, seconds(5))  # noqa: B023
        uuids = [f["newReverseImageClip"]["taskUUID"] for f in emulator.received_frames()[-2:]]
        texts = [{"taskUUID": uuids[0], "text": "a cat"}, {"taskUUID": uuids[1], "text": ["x"]}]
        emulator.send_raw(json.dumps({"newReverseClip": {"texts": texts}}))
        assert futures[0].result(timeout=seconds(5)) == "a cat"
        with pytest.raises(ProtocolError, match=uuids[1]):
            futures[1].result(timeout=seconds(5))


# ---------------------------------------------------------------------------
# Malformed authentication replies
# ---------------------------------------------------------------------------

#: Replies the client cannot take for a session; each must be a failed attempt.
BAD_REPLIES = [
    pytest.param("{not json", id="bad-json"),
    pytest.param("[]", id="not-an-object"),
    pytest.param('{"newConnectionSessionUUID": {"connectionSessionUUID": 5}}', id="wrong-type"),
    pytest.param('{"newConnectionSessionUUID": "s"}', id="wrong-body-type"),
    pytest.param('{"newConnectionSessionUUID": ' + DEEP + "}", id="deeply-nested"),
    pytest.param(DEEP, id="deeply-nested-array"),
    pytest.param('{"welcome": true}', id="unknown-frame"),
    pytest.param('{"error": true, "errorId": 500, "errorMessage": "internal"}', id="server-error"),
    pytest.param(
        '{"error": true, "errorId": 7, "errorMessage": "x", "taskUUID": "t"}', id="task-error"
    ),
]


@pytest.mark.parametrize("reply", BAD_REPLIES)
def test_bad_auth_reply_on_first_connect_fails_fast(emulator: Emulator, reply: str) -> None:
    """A malformed reply to the first newConnection makes Client() raise ConnectionFailedError."""
    emulator.bad_auth_reply(reply)
    started = time.monotonic()
    with pytest.raises(ConnectionFailedError) as info:
        make_client(emulator, connect_timeout=seconds(1))
    assert time.monotonic() - started < seconds(4)
    assert isinstance(info.value, diffusionmaster.DiffusionMasterError)
    assert _threads("diffusionmaster-supervisor") == []


@pytest.mark.parametrize("reply", BAD_REPLIES)
def test_bad_auth_reply_on_resume_is_a_failed_attempt(emulator: Emulator, reply: str) -> None:
    """A malformed reply to a resume is retried: the session resumes and calls are answered."""
    with make_client(emulator, connect_timeout=seconds(1)) as client:
        session = client.session_uuid
        emulator.bad_auth_reply(reply, times=2)
        _drop(emulator, client)
        (image,) = client.text2img("after the resume", seed=4)
        assert image.uuid
        assert client.state is State.CONNECTED
        assert client.session_uuid == session  # resumed, not a new session
        attempts = [f for f in emulator.received_frames() if "newConnection" in f]
        assert len(attempts) == 4  # the first connect, two bad replies, the resume
        assert len(_threads("diffusionmaster-supervisor")) == 1


def test_bad_auth_reply_on_resume_does_not_kill_the_supervisor(
    emulator: Emulator, caplog: pytest.LogCaptureFixture
) -> None:
    """After a deeply nested resume reply the supervisor thread lives on and logs the attempt."""
    with make_client(emulator) as client:
        (supervisor,) = _threads("diffusionmaster-supervisor")
        emulator.bad_auth_reply('{"newConnectionSessionUUID": ' + DEEP + "}")
        with caplog.at_level(logging.INFO, logger="diffusionmaster"):
            _drop(emulator, client)
            client.text2img("after the resume", seed=4)
        assert supervisor.is_alive()
        assert any(
            r.levelno == logging.WARNING
            and r.getMessage().startswith("reconnect attempt failed (attempt 1): ProtocolError")
            and "RecursionError" in r.getMessage()
            for r in caplog.records
        ), [r.getMessage() for r in caplog.records]


def test_calls_waiting_during_bad_resume_replies_are_answered(emulator: Emulator) -> None:
    """A call made while every resume reply is bad is answered once a good reply comes."""
    with make_client(emulator, connect_timeout=seconds(1)) as client:
        emulator.bad_auth_reply("{not json", times=3)
        _drop(emulator, client)
        future = client.submit(client.text2img, "waiting", seed=5)
        (image,) = future.result(timeout=seconds(10))
        assert image.uuid
        assert emulator.connections_opened == 5


# ---------------------------------------------------------------------------
# Dead-link detection with the default heartbeat
# ---------------------------------------------------------------------------


@pytest.mark.slow  # waits out the default heartbeat: about 10 s
def test_default_heartbeat_finds_a_frozen_link_within_ten_seconds(emulator: Emulator) -> None:
    """With the default Heartbeat, a frozen server is found dead within interval + timeout."""
    default = Heartbeat()
    assert default.interval is not None
    bound = default.interval + default.timeout
    assert bound <= 10.0
    lost = threading.Event()
    with make_client(emulator, heartbeat=default) as client:
        client.add_state_listener(lambda state: state is State.RECONNECTING and lost.set())
        client.text2img("last activity before the freeze")  # the idle clock starts now
        emulator.freeze()
        frozen_at = time.monotonic()
        try:
            assert lost.wait(bound + seconds(2))
            detection = time.monotonic() - frozen_at
        finally:
            emulator.thaw()
    print(f"frozen link found after {detection:.2f} s (bound {bound:g} s)")
    assert default.interval <= detection <= bound + seconds(1)


def test_api_key_is_not_logged_on_failed_attempts(
    emulator: Emulator, caplog: pytest.LogCaptureFixture
) -> None:
    """Failed authentication attempts log no API key."""
    with (
        caplog.at_level(logging.DEBUG, logger="diffusionmaster"),
        make_client(emulator, connect_timeout=seconds(1)) as client,
    ):
        emulator.bad_auth_reply("{not json")
        _drop(emulator, client)
        client.text2img("x", seed=1)
    assert all(API_KEY not in r.getMessage() for r in caplog.records)


def test_supervisor_bug_fails_waiting_calls_at_once(
    emulator: Emulator, caplog: pytest.LogCaptureFixture
) -> None:
    """An unexpected exception on the supervisor thread fails the client and its calls at once."""
    bug = RuntimeError("injected bug")

    def broken() -> float | None:
        raise bug

    with make_client(emulator, timeout=seconds(60)) as client:
        emulator.lose_next_task()
        client._supervisor._expire_due = broken  # type: ignore[method-assign]
        future = client.submit(client.text2img, "never answered")  # its deadline wakes the thread
        with pytest.raises(ConnectionFailedError, match="injected bug") as info:
            future.result(timeout=seconds(5))
        assert info.value.__cause__ is bug
        assert client.state is State.FAILED
        with pytest.raises(ConnectionFailedError, match="the client has failed"):
            client.text2img("after the failure")
    assert any(
        r.levelno == logging.ERROR and r.getMessage().startswith("supervisor thread failed")
        for r in caplog.records
    )


def test_routing_bug_costs_one_event_not_the_reader(
    emulator: Emulator, client: diffusionmaster.Client, caplog: pytest.LogCaptureFixture
) -> None:
    """An unexpected exception while routing one event is logged; the reader reads on."""
    core = client._supervisor._core
    receive = core.receive
    broken = threading.Event()

    def once(event: Any) -> Any:
        if not broken.is_set():
            broken.set()
            raise RuntimeError("injected routing bug")
        return receive(event)

    core.receive = once  # type: ignore[method-assign]
    stray = '{"newPromptEnhancer": {"texts": [{"taskUUID": "no-such-task", "text": "x"}]}}'
    assert emulator.send_raw(stray) == 1
    assert broken.wait(seconds(5))
    (image,) = client.text2img("after the bug", seed=6)
    assert image.uuid
    assert emulator.connections_opened == 1
    assert any(
        r.getMessage() == "could not route a TextsResult event; dropped it" for r in caplog.records
    )


def test_send_raw_reaches_only_authenticated_connections(emulator: Emulator) -> None:
    """send_raw sends to no one without an authenticated connection, and to each one with."""
    assert emulator.send_raw('{"pong": true}') == 0
    with make_client(emulator), make_client(emulator):
        assert emulator.send_raw('{"pong": true}') == 2


def test_bad_auth_reply_refuses_times_below_one(emulator: Emulator) -> None:
    """bad_auth_reply(times=0) raises ValueError naming the parameter."""
    with pytest.raises(ValueError, match="times must be an int >= 1, got 0"):
        emulator.bad_auth_reply("x", times=0)
