"""The session: pending tasks, routing, reconnection, resume, heartbeat, state.

The :class:`Supervisor` outlives connections. It keeps the map of pending tasks
(``taskUUID`` -> :class:`Pending`) and the session UUID, so that when a socket
drops, one thread (``diffusionmaster-supervisor``) reconnects and authenticates
with the stored UUID, and the results the server buffered meanwhile reach the
calls that still wait for them.

Threading invariants (each kept by the code next to it):

- ``_cond`` guards ``_state``, ``_conn``, ``_session_uuid`` and writes to
  ``_pending``. The reader thread reads ``_pending`` without the lock (one dict
  lookup is atomic) and only puts into queues: it never blocks on the lock.
- A pending entry is registered before its frame is sent, so a fast reply
  cannot race past it; it is removed by the waiting call when it is done, by
  the supervisor when it fails it, or by ``close()``.
- Frames are sent only on the current connection while the state is
  CONNECTED, never into a socket already known to be dead.
- ``Pending.session`` is the session the frame was handed to. When a reconnect
  lands in a new session, exactly the entries sent in the old one fail with
  :class:`SessionExpiredError`; unsent ones are sent in the new session.
- User code (state listeners) runs on ``diffusionmaster-events``, never on the
  reader or supervisor thread; a blocking call from any of these threads raises
  :class:`ReentrancyError`.
"""

from __future__ import annotations

import enum
import logging
import os
import queue
import random
import threading
import time
from collections.abc import Callable
from typing import Any

from . import protocol
from .config import Deadline, Heartbeat, Reconnect
from .connection import Connection, authenticate, internal_thread
from .errors import (
    AuthenticationError,
    ClientClosedError,
    ConnectionFailedError,
    ReentrancyError,
    RequestTimeoutError,
    SessionExpiredError,
    TaskError,
)

logger = logging.getLogger("diffusionmaster.supervisor")

__all__ = ["Pending", "State", "Supervisor"]


class State(str, enum.Enum):
    """The connection state of a client."""

    CONNECTING = "connecting"
    CONNECTED = "connected"
    RECONNECTING = "reconnecting"
    CLOSED = "closed"
    FAILED = "failed"


StateListener = Callable[[State], None]


class Pending:
    """One task waiting for its results: a queue fed by the reader thread."""

    __slots__ = ("answered", "frame", "queue", "resent", "session", "task_uuid")

    def __init__(self, task_uuid: str, frame: str) -> None:
        self.task_uuid = task_uuid
        self.frame = frame
        #: results (protocol items) and exceptions, in arrival order
        self.queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        #: the session the frame was handed to, None while unsent
        self.session: str | None = None
        #: True once anything arrived for it
        self.answered = False
        #: True once the supervisor re-sent it after a resume (resend_unanswered)
        self.resent = False


class _Events:
    """Runs state listeners on their own thread, in order; never blocks the caller."""

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[tuple[StateListener, State] | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def emit(self, listeners: list[StateListener], state: State) -> None:
        if not listeners:
            return
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="diffusionmaster-events", daemon=True
                )
                self._thread.start()
        for listener in listeners:
            self._queue.put((listener, state))

    def _run(self) -> None:
        internal_thread.active = True
        while (item := self._queue.get()) is not None:
            listener, state = item
            try:
                listener(state)
            except Exception:
                logger.exception("state listener %r failed", listener)

    def stop(self, timeout: float) -> None:
        self._queue.put(None)
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)


class Supervisor:
    """Owns the session across connections. Thread-safe."""

    def __init__(
        self,
        *,
        url: str,
        api_key: str,
        connect_timeout: float | None,
        reconnect: Reconnect,
        heartbeat: Heartbeat,
        transport_options: dict[str, Any] | None = None,
    ) -> None:
        self._url = url
        self._api_key = api_key
        self._connect_timeout = connect_timeout
        self._reconnect = reconnect
        self._heartbeat = heartbeat
        self._options = dict(transport_options or {})
        self._listeners: list[StateListener] = []
        self._init_runtime()

    def _init_runtime(self) -> None:
        # Everything a forked child must rebuild: locks may have been held at fork.
        self._pid = os.getpid()
        self._cond = threading.Condition(threading.Lock())
        self._wake = threading.Event()
        self._state = State.CONNECTING
        self._conn: Connection | None = None
        self._session_uuid: str | None = None
        self._pending: dict[str, Pending] = {}
        self._last_error: BaseException | None = None
        self._lost_at = 0.0
        self._ping_sent_at: float | None = None
        #: connections given up after a failed send, whose readers may still be reading
        #: what the server sent before the link died -> when to abort them at the latest
        self._draining: dict[Connection, float] = {}
        self._thread: threading.Thread | None = None
        self._events = _Events()

    # -- public surface ---------------------------------------------------------

    @property
    def state(self) -> State:
        """The current state."""
        return self._state

    @property
    def session_uuid(self) -> str | None:
        """The session UUID the server gave (None before the first connection)."""
        return self._session_uuid

    def add_listener(self, listener: StateListener) -> None:
        """Call ``listener(state)`` on the events thread at every state change."""
        with self._cond:
            self._listeners.append(listener)

    def remove_listener(self, listener: StateListener) -> None:
        """Stop calling ``listener``."""
        with self._cond:
            self._listeners.remove(listener)

    def start(self) -> None:
        """Connect and authenticate in the calling thread, then start supervising.

        Raises:
            AuthenticationError, ConnectionFailedError: the first connection failed.
        """
        try:
            transport, session_uuid = authenticate(
                self._url, self._api_key, None, timeout=self._connect_timeout,
                options=self._options,
            )  # fmt: skip
        except BaseException as exc:
            self._set_state(State.FAILED)
            self._last_error = exc
            raise
        self._install(transport, session_uuid)
        self._thread = threading.Thread(
            target=self._run, name="diffusionmaster-supervisor", daemon=True
        )
        self._thread.start()

    def submit(self, pending: Pending, deadline: Deadline) -> None:
        """Register ``pending`` and send its frame once connected.

        Waits (within ``deadline``) while the client reconnects.

        Raises:
            ReentrancyError: called from one of the client's own threads.
            ClientClosedError, AuthenticationError, ConnectionFailedError: the client
                is closed or failed for good.
            RequestTimeoutError: the deadline passed before the frame could be sent.
        """
        if getattr(internal_thread, "active", False):
            raise ReentrancyError(
                "blocking call from a thread of the client (a listener or callback); "
                "start it from another thread"
            )
        if self._pid != os.getpid():
            self._after_fork()
        with self._cond:
            self._check_usable()
            self._pending[pending.task_uuid] = pending
        try:
            while True:
                with self._cond:
                    while self._state is not State.CONNECTED:
                        self._check_usable()
                        if pending.task_uuid not in self._pending:
                            return  # failed meanwhile; the error waits in its queue
                        remaining = deadline.remaining()
                        if remaining is not None and remaining <= 0:
                            raise RequestTimeoutError(
                                f"not connected within the timeout (state {self._state.value})",
                                task_uuid=pending.task_uuid,
                            ) from self._last_error
                        self._cond.wait(remaining)
                    if pending.task_uuid not in self._pending:
                        return
                    conn = self._conn
                    assert conn is not None
                    pending.session = conn.session_uuid
                try:
                    conn.send(pending.frame)
                    return
                except ConnectionFailedError as exc:
                    # The frame did not leave: it is safe to send it again once connected,
                    # unless a resume raced us and the supervisor re-sent it already.
                    with self._cond:
                        if pending.resent:
                            return
                        pending.session = None
                    self._send_failed(conn, exc)
        except BaseException:
            self.forget(pending)
            raise

    def forget(self, pending: Pending) -> None:
        """Remove a pending entry (done, timed out, or abandoned); later frames are dropped."""
        with self._cond:
            if self._pending.get(pending.task_uuid) is pending:
                del self._pending[pending.task_uuid]

    def close(self, timeout: float = 2.0) -> None:
        """Close the connection, fail every waiting call, and stop the threads. Idempotent."""
        with self._cond:
            if self._state is State.CLOSED:
                return
            forked = self._pid != os.getpid()
            conn, self._conn = self._conn, None
            failed = self._take_pending(lambda p: True)
            self._state = State.CLOSED
            listeners = list(self._listeners)
            self._cond.notify_all()
        self._wake.set()
        for pending in failed:
            pending.queue.put(
                ClientClosedError(f"client closed while task {pending.task_uuid} waited")
            )
        with self._cond:
            draining = list(self._draining)
            self._draining.clear()
        if forked:
            for old in [conn, *draining]:
                if old is not None:
                    old.transport.detach()
            return
        for old in draining:
            old.abort()
        if conn is not None:
            conn.close(timeout)
        for old in draining:
            old.close(timeout)
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
        self._events.emit(listeners, State.CLOSED)
        self._events.stop(timeout)

    # -- internals ---------------------------------------------------------------

    def _check_usable(self) -> None:
        # Called with _cond held.
        if self._state is State.CLOSED:
            raise ClientClosedError("the client is closed")
        if self._state is State.FAILED:
            error = self._last_error
            if isinstance(error, AuthenticationError):
                raise AuthenticationError(str(error), error_id=error.error_id) from error
            raise ConnectionFailedError(f"the client has failed: {error}") from error

    def _take_pending(self, predicate: Callable[[Pending], bool]) -> list[Pending]:
        # Called with _cond held: remove and return the entries matching predicate.
        taken = [p for p in self._pending.values() if predicate(p)]
        for p in taken:
            del self._pending[p.task_uuid]
        return taken

    def _set_state(self, state: State) -> None:
        with self._cond:
            listeners = self._enter(state)
        self._events.emit(listeners, state)

    def _enter(self, state: State) -> list[StateListener]:
        # Called with _cond held: change state, wake waiters, return the listeners to call
        # (after the lock is released).
        self._state = state
        self._cond.notify_all()
        return list(self._listeners)

    def _install(self, transport: Any, session_uuid: str) -> Connection | None:
        conn = Connection(
            transport, session_uuid, on_event=self._route, on_lost=self._connection_lost
        )
        with self._cond:
            if self._state is State.CLOSED:
                transport.close()
                return None
            # Connection and state change together, so that a drop reported by the new
            # reader is never taken for a drop of an older connection.
            self._conn = conn
            self._session_uuid = session_uuid
            self._ping_sent_at = None
            listeners = self._enter(State.CONNECTED)
        conn.start()
        self._events.emit(listeners, State.CONNECTED)
        return conn

    def _route(self, event: protocol.Event) -> None:
        # Runs on the reader thread: lookups and queue puts only.
        pending = self._pending
        if isinstance(event, protocol.ImagesResult):
            for image in event.images:
                self._deliver(pending.get(image.task_uuid), image, image.task_uuid)
        elif isinstance(event, protocol.TextsResult):
            for text in event.texts:
                self._deliver(pending.get(text.task_uuid), text, text.task_uuid)
        elif isinstance(event, (protocol.UploadResult, protocol.PreprocessResult)):
            self._deliver(pending.get(event.task_uuid), event, event.task_uuid)
        elif isinstance(event, protocol.ServerError):
            if event.task_uuid is None:
                logger.warning("server error (errorId %s): %s", event.error_id, event.error_message)
            else:
                error = TaskError(
                    event.error_message, task_uuid=event.task_uuid, error_id=event.error_id
                )
                self._deliver(pending.get(event.task_uuid), error, event.task_uuid)
        elif isinstance(event, protocol.Unknown):
            logger.debug("ignoring unknown frame %r", event.key)

    @staticmethod
    def _deliver(pending: Pending | None, item: Any, task_uuid: str) -> None:
        if pending is None:
            logger.debug("dropping a result for task %s, which nobody waits for", task_uuid)
            return
        pending.answered = True
        pending.queue.put(item)

    def _connection_lost(self, conn: Connection, reason: BaseException | None) -> None:
        # The reader's last act: its socket has ended.
        conn.abort()
        with self._cond:
            self._draining.pop(conn, None)
        self._mark_lost(conn, reason)

    def _send_failed(self, conn: Connection, reason: BaseException) -> None:
        # A send failed: the link is dead, but frames the server wrote before it died
        # may still wait unread in the socket. Aborting now would throw them away (and
        # the server counts them as delivered), so the reader drains them and ends on
        # the error that follows; the supervisor aborts it if it is still there after
        # the heartbeat timeout (a link that died silently), and close() does at once.
        if conn.reading:
            with self._cond:
                self._draining[conn] = time.monotonic() + self._heartbeat.timeout
        self._wake.set()
        self._mark_lost(conn, reason)

    def _reap_draining(self) -> float | None:
        """Abort draining connections past their time; return seconds until the next one."""
        now = time.monotonic()
        with self._cond:
            due = [c for c, deadline in self._draining.items() if deadline <= now]
            for conn in due:
                del self._draining[conn]
            later = [deadline - now for deadline in self._draining.values()]
        for conn in due:
            logger.debug("aborting a connection that did not end after a failed send")
            conn.abort()
        return min(later) if later else None

    def _mark_lost(self, conn: Connection, reason: BaseException | None) -> None:
        # The current connection is gone: reconnect (or fail, if reconnecting is off).
        with self._cond:
            if self._conn is not conn or self._state is not State.CONNECTED:
                return
            self._conn = None
            self._last_error = reason
            self._lost_at = time.monotonic()
            if self._reconnect.enabled:
                new_state = State.RECONNECTING
                failed: list[Pending] = []
            else:
                new_state = State.FAILED
                failed = self._take_pending(lambda p: True)
            listeners = self._enter(new_state)
        logger.info("lost the connection: %s", reason)
        for pending in failed:
            error = ConnectionFailedError(f"connection lost while task {pending.task_uuid} waited")
            error.__cause__ = reason
            pending.queue.put(error)
        self._events.emit(listeners, new_state)
        self._wake.set()

    def _after_fork(self) -> None:
        # In a child process: the parent's socket and threads are not ours. Forget
        # them (without shutting the shared socket down) and start a new session.
        conn = self._conn
        if conn is not None:
            conn.transport.detach()
        self._init_runtime()
        self.start()

    def _run(self) -> None:
        internal_thread.active = True
        while True:
            with self._cond:
                state, conn = self._state, self._conn
            if state in (State.CLOSED, State.FAILED):
                return
            reap = self._reap_draining()
            if state is State.RECONNECTING:
                self._recover()
                continue
            beat = self._beat(conn) if conn is not None else None
            waits = [w for w in (beat, reap) if w is not None]
            self._wake.wait(min(waits) if waits else None)
            self._wake.clear()

    def _beat(self, conn: Connection) -> float | None:
        """One heartbeat step; return the seconds until the next one is due."""
        interval = self._heartbeat.interval
        if interval is None:
            return None
        now = time.monotonic()
        sent_at = self._ping_sent_at
        if sent_at is not None:
            if conn.last_received >= sent_at:
                self._ping_sent_at = sent_at = None  # any frame proves the link alive
            elif now - sent_at >= self._heartbeat.timeout:
                logger.info("no answer to a ping for %.1f s: connection is dead", now - sent_at)
                conn.abort()
                return None
            else:
                return sent_at + self._heartbeat.timeout - now
        idle_since = min(conn.last_received, conn.last_sent)
        if now - idle_since < interval:
            return idle_since + interval - now
        self._ping_sent_at = now
        try:
            conn.send(protocol.encode(protocol.Ping()))
        except ConnectionFailedError as exc:
            self._send_failed(conn, exc)
            return None
        # Look again when the answer is due, or sooner when the next ping is.
        return min(interval, self._heartbeat.timeout)

    def _delays(self) -> Any:
        """Seconds to wait before each reconnect attempt: 0, then backoff with jitter."""
        policy = self._reconnect
        yield 0.0
        delay = policy.min_delay
        while True:
            yield delay * (1.0 - policy.jitter * random.random())
            delay = min(policy.max_delay, delay * policy.multiplier)

    def _recover(self) -> None:
        self._wake.clear()  # the drop that brought us here set it
        old_uuid = self._session_uuid
        window = Deadline(
            max(0.0, self._lost_at + self._reconnect.resume_window - time.monotonic())
        )
        given_up = False
        for attempt, delay in enumerate(self._delays(), start=1):
            if delay > 0 and self._wake.wait(delay):
                self._wake.clear()
            if self._state is State.CLOSED:
                return
            logger.info(
                "reconnecting to %s (attempt %d, after %.2f s): %s",
                self._url, attempt, delay, self._last_error,
            )  # fmt: skip
            try:
                transport, session_uuid = authenticate(
                    self._url, self._api_key, old_uuid, timeout=self._connect_timeout,
                    options=self._options,
                )  # fmt: skip
            except AuthenticationError as exc:
                self._fail(exc)
                return
            except ConnectionFailedError as exc:
                self._last_error = exc
                if window.expired() and not given_up:
                    given_up = True
                    self._give_up(exc)
                continue
            self._resumed(transport, session_uuid, old_uuid)
            return

    def _give_up(self, reason: BaseException) -> None:
        # The resume window has passed: the results of sent tasks are gone.
        with self._cond:
            failed = self._take_pending(lambda p: p.session is not None)
        window = self._reconnect.resume_window
        logger.warning(
            "could not reconnect within the %g s resume window; %d waiting tasks failed",
            window, len(failed),
        )  # fmt: skip
        for pending in failed:
            error = ConnectionFailedError(
                f"could not reconnect within {window:g} s; the results of task "
                f"{pending.task_uuid} are lost (the task may have been billed)"
            )
            error.__cause__ = reason
            pending.queue.put(error)

    def _fail(self, error: BaseException) -> None:
        with self._cond:
            self._last_error = error
            failed = self._take_pending(lambda p: True)
        logger.warning("reconnect refused: %s; not retrying", error)
        for pending in failed:
            exc = AuthenticationError(str(error), error_id=getattr(error, "error_id", None))
            exc.__cause__ = error
            pending.queue.put(exc)
        self._set_state(State.FAILED)

    def _resumed(self, transport: Any, session_uuid: str, old_uuid: str | None) -> None:
        resend: list[Pending] = []
        with self._cond:
            if session_uuid != old_uuid:
                expired = self._take_pending(lambda p: p.session is not None)
            else:
                expired = []
                if self._reconnect.resend_unanswered:
                    resend = [p for p in self._pending.values() if not p.answered and p.session]
                    for pending in resend:
                        pending.resent = True
        if expired:
            uuids = [p.task_uuid for p in expired]
            logger.warning(
                "session %s expired (new session %s); %d waiting tasks lost: %s",
                old_uuid, session_uuid, len(uuids), ", ".join(uuids),
            )  # fmt: skip
            for pending in expired:
                pending.queue.put(
                    SessionExpiredError(
                        f"the server no longer knows session {old_uuid}: the results of "
                        f"task {pending.task_uuid} are lost (it may have been billed; "
                        f"it was not re-sent)",
                        task_uuids=uuids,
                    )
                )
        else:
            logger.info("session %s resumed", session_uuid)
        # Re-sent before CONNECTED, so they precede new tasks; same taskUUID, so the
        # server runs each at most once (house rule 6).
        for pending in resend:
            logger.info("re-sending unanswered task %s after resume", pending.task_uuid)
            try:
                transport.send(pending.frame)
            except ConnectionFailedError as exc:
                logger.info("re-send failed: %s", exc)
                break
        self._install(transport, session_uuid)
