"""Fault injection against the real client: reconnect, resume, heartbeat, expiry.

Every wait is on an event or the emulator's condition, with a timeout; the resume
window, heartbeat and backoff are shortened through configuration.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

import diffusionmaster
from diffusionmaster import (
    AuthenticationError,
    ClientClosedError,
    Heartbeat,
    Reconnect,
    RequestTimeoutError,
    SessionExpiredError,
    State,
)
from diffusionmaster.testing import Emulator

from .conftest import API_KEY, make_client, seconds


class States:
    """Records a client's state changes; lets a test wait for one."""

    def __init__(self, client: diffusionmaster.Client) -> None:
        self.seen: list[State] = []
        self._cond = threading.Condition()
        client.add_state_listener(self._on_state)

    def _on_state(self, state: State) -> None:
        with self._cond:
            self.seen.append(state)
            self._cond.notify_all()

    def wait_for(self, state: State, timeout: float, *, count: int = 1) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: self.seen.count(state) >= count, timeout)


def _tasks(emu: Emulator) -> list[dict[str, Any]]:
    return [f["newTask"] for f in emu.received_frames() if "newTask" in f]


def _in_thread(fn: Any, *args: Any, **kwargs: Any) -> tuple[threading.Thread, dict[str, Any]]:
    """Run a call in a thread; its result or exception lands in the returned dict."""
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["result"] = fn(*args, **kwargs)
        except BaseException as exc:
            outcome["error"] = exc

    thread = threading.Thread(target=run)
    thread.start()
    return thread, outcome


@pytest.fixture
def emu() -> Iterator[Emulator]:
    with Emulator(api_keys=[API_KEY], resume_window=seconds(5)) as emulator:
        yield emulator


def test_drop_mid_task_returns_every_image_once(emu: Emulator) -> None:
    """1 of 4 images arrives, the connection drops, and the call still returns all 4, once each."""
    with make_client(emu) as client:
        first_session = client.session_uuid
        emu.latency = 0.02  # the other images are produced while the client reconnects
        emu.drop_after_results(1)
        images = client.text2img("a storm", number_results=4)
        assert client.session_uuid == first_session
    assert len(images) == 4
    assert len({i.uuid for i in images}) == 4
    assert emu.connections_opened >= 2


def test_restart_keeping_sessions_loses_nothing(emu: Emulator) -> None:
    """A restart that keeps sessions is resumed and the waiting call gets its images."""
    with make_client(emu) as client:
        session = client.session_uuid
        emu.withhold_frames()
        thread, outcome = _in_thread(client.text2img, "calm sea", number_results=2)
        assert emu.wait_for(lambda: len(_tasks(emu)) == 1, seconds(5))
        emu.restart(keep_sessions=True)
        emu.release_frames()
        thread.join(seconds(10))
        assert client.session_uuid == session
    assert "error" not in outcome
    assert len({i.uuid for i in outcome["result"]}) == 2


def test_restart_losing_sessions_fails_fast(emu: Emulator) -> None:
    """A restart that loses sessions fails the waiting call with SessionExpiredError quickly."""
    with make_client(emu, timeout=seconds(30)) as client:
        old_session = client.session_uuid
        emu.withhold_frames()
        thread, outcome = _in_thread(client.text2img, "gone")
        assert emu.wait_for(lambda: len(_tasks(emu)) == 1, seconds(5))
        started = time.monotonic()
        emu.restart(keep_sessions=False)
        thread.join(seconds(10))
        elapsed = time.monotonic() - started
        assert client.session_uuid != old_session
        # the client works on in its new session
        emu.release_frames()
        assert len(client.text2img("new session")) == 1
    error = outcome["error"]
    assert isinstance(error, SessionExpiredError)
    assert error.task_uuids == (_tasks(emu)[0]["taskUUID"],)
    assert "may have been billed" in str(error)
    assert elapsed < 3


def test_expired_window_fails_with_session_expired(emu: Emulator) -> None:
    """Sessions forgotten by the server make waiting calls fail with SessionExpiredError."""
    with make_client(emu) as client:
        emu.withhold_frames()
        thread, outcome = _in_thread(client.text2img, "late")
        assert emu.wait_for(lambda: len(_tasks(emu)) == 1, seconds(5))
        emu.expire_sessions()
        thread.join(seconds(10))
    assert isinstance(outcome["error"], SessionExpiredError)


def test_frozen_server_detected_by_heartbeat(emu: Emulator) -> None:
    """A server that stops answering is found dead by the heartbeat, and the client resumes."""
    heartbeat = Heartbeat(interval=seconds(0.1), timeout=seconds(0.3))
    with make_client(emu, heartbeat=heartbeat, connect_timeout=seconds(0.5)) as client:
        states = States(client)
        session = client.session_uuid
        emu.freeze()
        started = time.monotonic()
        assert states.wait_for(State.RECONNECTING, seconds(3))
        assert time.monotonic() - started < 1.5
        emu.thaw()
        assert states.wait_for(State.CONNECTED, seconds(10))
        assert client.session_uuid == session
        assert len(client.text2img("after the freeze")) == 1


def test_idle_connection_outlives_the_idle_close(emu: Emulator) -> None:
    """The heartbeat keeps an idle connection open past the server's idle timeout."""
    emu.idle_timeout = 0.3
    with make_client(
        emu, heartbeat=Heartbeat(interval=seconds(0.05), timeout=seconds(1))
    ) as client:
        opened = emu.connections_opened
        # wait on the server's condition, for the length of three idle timeouts
        assert not emu.wait_for(lambda: emu.connections_opened > opened, 0.9)
        assert client.state is State.CONNECTED
        pings = [f for f in emu.received_frames() if f == {"ping": True}]
        assert len(pings) >= 3


def test_take_over_of_half_open_connection(emu: Emulator) -> None:
    """A client that gave up a link the server still holds resumes on a new one (take-over)."""
    heartbeat = Heartbeat(interval=seconds(0.1), timeout=seconds(0.3))
    with make_client(emu, heartbeat=heartbeat, connect_timeout=seconds(0.5)) as client:
        states = States(client)
        session = client.session_uuid
        emu.miss_disconnects()  # the server will not learn that the old link ended
        emu.withhold_frames()
        thread, outcome = _in_thread(client.text2img, "kept", number_results=2)
        assert emu.wait_for(lambda: len(_tasks(emu)) == 1, seconds(5))
        emu.freeze()  # no pongs: the client gives the link up
        assert states.wait_for(State.RECONNECTING, seconds(3))
        emu.thaw()
        assert states.wait_for(State.CONNECTED, seconds(10))
        emu.release_frames()
        thread.join(seconds(10))
        assert client.session_uuid == session
    assert emu.takeovers == 1
    assert len({i.uuid for i in outcome["result"]}) == 2


def test_close_stops_reconnect_attempts_at_once() -> None:
    """close() while reconnecting to a dead server returns at once and stops every thread."""
    emu = Emulator(api_keys=[API_KEY]).start()
    client = make_client(emu, reconnect=Reconnect(resume_window=seconds(30), min_delay=5))
    states = States(client)
    emu.close()  # the server is gone: attempts fail and back off
    assert states.wait_for(State.RECONNECTING, seconds(5))
    started = time.monotonic()
    client.close()
    assert time.monotonic() - started < 1
    assert client.state is State.CLOSED


def test_revoked_key_at_reconnect_fails_calls(emu: Emulator) -> None:
    """A key refused at reconnect fails the waiting calls with AuthenticationError, no retries."""
    with make_client(emu) as client:
        states = States(client)
        emu.withhold_frames()
        thread, outcome = _in_thread(client.text2img, "doomed")
        assert emu.wait_for(lambda: len(_tasks(emu)) == 1, seconds(5))
        emu.revoke_key(API_KEY)
        emu.drop_connections()
        thread.join(seconds(10))
        assert states.wait_for(State.FAILED, seconds(5))
        opened = emu.connections_opened
        with pytest.raises(AuthenticationError):
            client.text2img("more")
        assert emu.connections_opened == opened
    assert isinstance(outcome["error"], AuthenticationError)


def test_calls_made_while_reconnecting_wait_and_are_sent(emu: Emulator) -> None:
    """A call made during a reconnect is sent after authentication and completes."""
    heartbeat = Heartbeat(interval=seconds(0.1), timeout=seconds(0.3))
    with make_client(emu, heartbeat=heartbeat, connect_timeout=seconds(0.5)) as client:
        states = States(client)
        emu.freeze()
        assert states.wait_for(State.RECONNECTING, seconds(3))
        thread, outcome = _in_thread(client.text2img, "patient")
        emu.thaw()
        thread.join(seconds(10))
    assert len(outcome["result"]) == 1
    assert [t["promptText"] for t in _tasks(emu)] == ["patient"]


def test_call_times_out_while_disconnected(emu: Emulator) -> None:
    """A call that cannot be sent before its deadline raises RequestTimeoutError."""
    with make_client(
        emu,
        heartbeat=Heartbeat(interval=seconds(0.1), timeout=seconds(0.3)),
        connect_timeout=seconds(0.5),
    ) as client:
        states = States(client)
        emu.freeze()
        assert states.wait_for(State.RECONNECTING, seconds(3))
        with pytest.raises(RequestTimeoutError, match="not connected"):
            client.text2img("no chance", timeout=seconds(0.2))
        emu.thaw()
    assert _tasks(emu) == []


def test_lost_task_is_not_resent_by_default(emu: Emulator) -> None:
    """Without resend_unanswered, a task lost in a drop waits until its timeout."""
    with make_client(emu) as client:
        emu.lose_next_task()
        thread, outcome = _in_thread(client.text2img, "lost", timeout=seconds(1))
        assert emu.wait_for(lambda: len(_tasks(emu)) == 1, seconds(5))
        emu.drop_connections()
        thread.join(seconds(10))
    assert isinstance(outcome["error"], RequestTimeoutError)
    assert len(_tasks(emu)) == 1


def test_lost_task_is_resent_when_enabled(emu: Emulator) -> None:
    """With resend_unanswered, a task lost in a drop is re-sent with the same UUID after resume."""
    reconnect = Reconnect(resume_window=seconds(5), min_delay=0.01, resend_unanswered=True)
    with make_client(emu, reconnect=reconnect) as client:
        emu.lose_next_task()
        thread, outcome = _in_thread(client.text2img, "found", number_results=2)
        assert emu.wait_for(lambda: len(_tasks(emu)) == 1, seconds(5))
        emu.drop_connections()
        thread.join(seconds(10))
    assert len({i.uuid for i in outcome["result"]}) == 2
    first, second = _tasks(emu)
    assert first["taskUUID"] == second["taskUUID"]


def test_resent_running_task_is_delivered_once(emu: Emulator) -> None:
    """Re-sending a task the server still runs yields its images once (house rule 6)."""
    reconnect = Reconnect(resume_window=seconds(5), min_delay=0.01, resend_unanswered=True)
    with make_client(emu, reconnect=reconnect) as client:
        emu.withhold_frames()
        thread, outcome = _in_thread(client.text2img, "once", number_results=3)
        assert emu.wait_for(lambda: len(_tasks(emu)) == 1, seconds(5))
        emu.drop_connections()
        assert emu.wait_for(lambda: len(_tasks(emu)) == 2, seconds(5))
        emu.release_frames()
        thread.join(seconds(10))
    assert len({i.uuid for i in outcome["result"]}) == 3
    assert emu.image_count == 3


def test_no_reconnect_when_disabled(emu: Emulator) -> None:
    """With reconnect disabled, a drop fails the waiting call with ConnectionFailedError."""
    with make_client(emu, reconnect=Reconnect(enabled=False)) as client:
        emu.withhold_frames()
        thread, outcome = _in_thread(client.text2img, "fragile")
        assert emu.wait_for(lambda: len(_tasks(emu)) == 1, seconds(5))
        emu.drop_connections()
        thread.join(seconds(10))
        assert client.state is State.FAILED
    assert isinstance(outcome["error"], diffusionmaster.ConnectionFailedError)


def test_listener_runs_off_the_reader_and_cannot_block_it(emu: Emulator) -> None:
    """A blocking call from a state listener raises ReentrancyError instead of deadlocking."""
    errors: list[BaseException] = []
    names: list[str] = []
    done = threading.Event()
    with make_client(emu) as client:

        def listener(state: State) -> None:
            names.append(threading.current_thread().name)
            if state is State.CONNECTED:
                try:
                    client.text2img("from a listener")
                except BaseException as exc:
                    errors.append(exc)
                done.set()

        client.add_state_listener(listener)
        emu.drop_connections()
        assert done.wait(seconds(5))
    assert isinstance(errors[0], diffusionmaster.ReentrancyError)
    assert set(names) <= {"diffusionmaster-events"}


def test_reconnect_logging(emu: Emulator, caplog: pytest.LogCaptureFixture) -> None:
    """Each reconnect attempt is logged at INFO with delay and reason; the key never appears."""
    caplog.set_level(logging.DEBUG, logger="diffusionmaster")
    with make_client(emu) as client:
        states = States(client)
        emu.drop_connections()
        assert states.wait_for(State.CONNECTED, seconds(5), count=1)
        client.text2img("logged")
    attempts = [r for r in caplog.records if r.getMessage().startswith("reconnecting to")]
    assert attempts and all(r.levelno == logging.INFO for r in attempts)
    assert "attempt 1, after 0.00 s" in attempts[0].getMessage()
    assert all(API_KEY not in r.getMessage() for r in caplog.records)


def test_session_expiry_logged_as_warning(emu: Emulator, caplog: pytest.LogCaptureFixture) -> None:
    """A lost session is logged at WARNING."""
    caplog.set_level(logging.INFO, logger="diffusionmaster")
    with make_client(emu) as client:
        emu.withhold_frames()
        thread, _ = _in_thread(client.text2img, "lost")
        assert emu.wait_for(lambda: len(_tasks(emu)) == 1, seconds(5))
        emu.restart(keep_sessions=False)
        thread.join(seconds(10))
    assert any(r.levelno == logging.WARNING and "expired" in r.getMessage() for r in caplog.records)


def test_closed_client_during_reconnect_fails_calls(emu: Emulator) -> None:
    """close() during a reconnect wakes a call that waited to be sent."""
    with make_client(
        emu,
        heartbeat=Heartbeat(interval=seconds(0.1), timeout=seconds(0.3)),
        connect_timeout=seconds(0.5),
    ) as client:
        states = States(client)
        emu.freeze()
        assert states.wait_for(State.RECONNECTING, seconds(3))
        thread, outcome = _in_thread(client.text2img, "never sent", timeout=seconds(30))
        client.close()
        thread.join(seconds(2))
        emu.thaw()
    assert isinstance(outcome["error"], ClientClosedError)


def test_give_up_after_the_resume_window_then_recover() -> None:
    """Past the resume window waiting calls fail with ConnectionFailedError; later calls work."""
    first = Emulator(api_keys=[API_KEY]).start()
    port = first.port
    reconnect = Reconnect(resume_window=0.5, min_delay=0.02, max_delay=0.1)
    with make_client(first, reconnect=reconnect, timeout=seconds(30)) as client:
        states = States(client)
        first.withhold_frames()
        thread, outcome = _in_thread(client.text2img, "stranded")
        assert first.wait_for(lambda: len(_tasks(first)) == 1, seconds(5))
        first.close()
        thread.join(seconds(10))
        error = outcome["error"]
        assert isinstance(error, diffusionmaster.ConnectionFailedError)
        assert "could not reconnect within 0.5 s" in str(error)
        assert client.state is State.RECONNECTING
        with Emulator(api_keys=[API_KEY], port=port) as second:
            assert states.wait_for(State.CONNECTED, seconds(10))
            assert len(client.text2img("back again")) == 1
            assert client.session_uuid in second.session_uuids()


def _child_call(client: diffusionmaster.Client, conn: Any) -> None:
    # Runs in a forked child: report the session and the result, never raise.
    try:
        (image,) = client.text2img("from the child")
        conn.send(("ok", client.session_uuid, image.task_uuid))
        client.close()
    except BaseException as exc:
        conn.send(("error", repr(exc), None))
    finally:
        conn.close()


@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")
def test_client_reconnects_in_a_forked_child(emu: Emulator) -> None:
    """A client created before fork() opens its own session in the child; the parent's is intact."""
    import multiprocessing

    context = multiprocessing.get_context("fork")
    with make_client(emu) as client:
        parent_session = client.session_uuid
        receiver, sender = context.Pipe(duplex=False)
        child = context.Process(target=_child_call, args=(client, sender))
        child.start()
        assert receiver.poll(seconds(15)), "the child did not answer"
        status, child_session, task_uuid = receiver.recv()
        child.join(seconds(5))
        assert status == "ok", child_session
        assert child_session != parent_session
        assert child_session in emu.session_uuids()
        # the parent's connection was not cut by the child
        assert client.session_uuid == parent_session
        assert len(client.text2img("from the parent")) == 1
    assert task_uuid in {t["taskUUID"] for t in _tasks(emu)}
    assert child.exitcode == 0


def test_new_session_is_published_before_calls_fail(emu: Emulator) -> None:
    """A caller that catches SessionExpiredError already sees the new session, connected."""
    with make_client(emu) as client:
        old = client.session_uuid
        emu.withhold_frames()
        seen: dict[str, Any] = {}

        def call() -> None:
            try:
                client.text2img("late")
            except SessionExpiredError:
                seen["state"], seen["session"] = client.state, client.session_uuid

        thread = threading.Thread(target=call)
        thread.start()
        assert emu.wait_for(lambda: len(_tasks(emu)) == 1, seconds(5))
        emu.expire_sessions()
        thread.join(seconds(10))
    assert seen["state"] is diffusionmaster.State.CONNECTED
    assert seen["session"] not in (None, old)
