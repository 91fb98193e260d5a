"""The supervisor: threads, timers and sockets around the pure session core.

The :class:`Supervisor` outlives connections. Every decision about tasks in
flight (routing, completion, repeats, what a resume means) is the
:class:`~diffusionmaster.session.SessionCore`'s; the supervisor feeds it events
and acts on its answers. It owns one thread (``diffusionmaster-supervisor``)
that reconnects with backoff when a socket drops, runs the heartbeat, and
expires calls whose deadline passed.

Threading invariants (each kept by the code next to it):

- ``_lock`` guards ``_state``, ``_conn``, ``_core``, ``_timers`` and
  ``_draining``. It is never held across I/O or a callback: the reader takes
  it only to feed the core one event, and acts on the answer after releasing it.
- A task is registered in the core before its frame is sent, so a fast reply
  cannot race past it. It is handed to a connection (marked sent, under the
  lock) before the frame is written; a write that fails marks it unsent again
  unless a resume has re-sent it meanwhile (the core's attempt counter).
- Frames are written only on the current connection while the state is
  CONNECTED. Tasks registered while reconnecting wait unsent, and are sent by
  the supervisor thread right after the next connection is published.
- On a reconnect, the new state and session are published before any call is
  failed, so a caller that catches :class:`SessionExpiredError` already sees
  the new session.
- Every call that fails, for any reason, fails through :meth:`_fail`.
- User code never runs on the reader or supervisor thread: state listeners and
  done-callbacks run on the dispatcher thread; a blocking call from any of the
  client's threads raises :class:`ReentrancyError`.
- In a forked child, :func:`os.register_at_fork` rebuilds the runtime (locks
  included, at a moment when only one thread exists) and the first call opens a
  new session: the parent's socket is closed in the child without a shutdown.
"""

from __future__ import annotations

import enum
import heapq
import itertools
import logging
import os
import random
import threading
import time
import weakref
from collections.abc import Callable
from typing import Any

from . import protocol
from .calls import Call, Dispatcher
from .config import Deadline, Heartbeat, Reconnect
from .connection import Connection, authenticate, internal_thread
from .errors import (
    AuthenticationError,
    ClientClosedError,
    ConnectionFailedError,
    ProtocolError,
    ReentrancyError,
    RequestTimeoutError,
    SessionExpiredError,
)
from .session import Delivery, Entry, SessionCore

logger = logging.getLogger("diffusionmaster.supervisor")

__all__ = ["State", "StateListener", "Supervisor"]


class State(str, enum.Enum):
    """The connection state of a client."""

    CONNECTING = "connecting"
    CONNECTED = "connected"
    RECONNECTING = "reconnecting"
    CLOSED = "closed"
    FAILED = "failed"


StateListener = Callable[[State], None]

#: Supervisors alive in this process, rebuilt in a forked child.
_LIVE: weakref.WeakSet[Supervisor] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for supervisor in list(_LIVE):
        supervisor._after_fork()


os.register_at_fork(after_in_child=_after_fork_in_child)


def check_not_internal() -> None:
    """Raise :class:`ReentrancyError` on one of the client's own threads."""
    if getattr(internal_thread, "active", False):
        raise ReentrancyError(
            "blocking call from a thread of the client (a listener or callback); "
            "start it from another thread, or use client.submit()"
        )


def _detached(exc: BaseException) -> BaseException:
    """A copy of ``exc`` with no traceback: keeping it keeps no socket alive."""
    if isinstance(exc, AuthenticationError):
        return AuthenticationError(str(exc), error_id=exc.error_id)
    return ConnectionFailedError(str(exc) or type(exc).__name__)


class _Backoff:
    """Delays between reconnect attempts: 0, then growing with jitter until reset.

    It is reset only by a connection that proved healthy (see
    :meth:`Supervisor._mark_lost`), so a server that accepts and then drops every
    connection at once meets a growing delay, not a storm of attempts.
    """

    def __init__(self, policy: Reconnect) -> None:
        self._policy = policy
        self._delay: float | None = None

    def reset(self) -> None:
        self._delay = None

    def next(self) -> float:
        policy = self._policy
        if self._delay is None:
            self._delay = policy.min_delay
            return 0.0
        delay = self._delay * (1.0 - policy.jitter * random.random())
        self._delay = min(policy.max_delay, self._delay * policy.multiplier)
        return delay


#: The events that carry results for tasks.
_RESULTS = (
    protocol.ImagesResult,
    protocol.TextsResult,
    protocol.UploadResult,
    protocol.PreprocessResult,
)


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
        _LIVE.add(self)

    def _init_runtime(self) -> None:
        # Everything a forked child must rebuild: locks may have been held at fork.
        self._pid = os.getpid()
        self._lock = threading.Lock()
        self._start_lock = threading.Lock()
        self._started = False
        self._wake = threading.Event()
        self._state = State.CONNECTING
        self._conn: Connection | None = None
        self._core: SessionCore[Call[Any]] = SessionCore()
        self._last_error: BaseException | None = None
        self._lost_at = 0.0
        self._healthy = False  # the current connection carried results
        self._connected_at = 0.0
        self._backoff = _Backoff(self._reconnect)
        self._ping_sent_at: float | None = None
        self._ping_written = False  # the last probe's ping went out (else a send blocked it)
        #: (deadline, n, call): calls to expire when their deadline passes
        self._timers: list[tuple[float, int, Call[Any]]] = []
        self._counter = itertools.count()
        #: connections given up after a failed send, whose readers may still be reading
        #: what the server sent before the link died -> when to abort them at the latest
        self._draining: dict[Connection, float] = {}
        self._thread: threading.Thread | None = None
        self.dispatcher = Dispatcher()

    # -- public surface ---------------------------------------------------------

    @property
    def state(self) -> State:
        """The current state."""
        return self._state

    @property
    def session_uuid(self) -> str | None:
        """The session UUID the server gave (None before the first connection)."""
        return self._core.session_uuid

    @property
    def in_flight(self) -> int:
        """How many tasks are registered (sent or waiting to be sent)."""
        return len(self._core)

    def post(self, fn: Callable[[], object]) -> None:
        """Run ``fn()`` on the dispatcher thread (never the reader's)."""
        self.dispatcher.post(fn)

    def add_listener(self, listener: StateListener) -> None:
        """Call ``listener(state)`` on the dispatcher thread at every state change."""
        with self._lock:
            self._listeners.append(listener)

    def remove_listener(self, listener: StateListener) -> None:
        """Stop calling ``listener``."""
        with self._lock:
            self._listeners.remove(listener)

    def start(self) -> None:
        """Connect and authenticate in the calling thread, then start supervising.

        One attempt, not retried: a failure is raised to the caller (the client's
        constructor) at once, and the state becomes ``failed``.

        Raises:
            AuthenticationError: the server refused the key.
            ConnectionFailedError: the network failed, or the server's reply to
                ``newConnection`` could not be read (caused by a ProtocolError).
        """
        with self._start_lock:
            if self._started:
                return
            logger.info("connecting to %s", self._url)
            try:
                transport, session_uuid = authenticate(
                    self._url, self._api_key, None, timeout=self._connect_timeout,
                    options=self._options,
                )  # fmt: skip
            except ProtocolError as exc:
                # A reply we cannot read is a failed connection, as a network failure is.
                self._last_error = _detached(exc)
                self._set_state(State.FAILED)
                raise ConnectionFailedError(
                    f"the server's reply to newConnection cannot be read: {exc}"
                ) from exc
            except BaseException as exc:
                self._last_error = _detached(exc)
                self._set_state(State.FAILED)
                raise
            self._started = True
            self._thread = threading.Thread(
                target=self._run, name="diffusionmaster-supervisor", daemon=True
            )
            self._install(transport, session_uuid)
            self._thread.start()

    def send(self, call: Call[Any], frame: str) -> None:
        """Register ``call``'s task and send its frame now, or as soon as connected.

        Never waits for a connection: a task registered while reconnecting is sent
        by the supervisor thread once connected, and expires at its deadline.
        Safe from any thread but the reader.

        Raises:
            ClientClosedError, AuthenticationError, ConnectionFailedError: the client
                is closed or has failed for good (nothing was registered).
        """
        if not self._started:
            self.start()  # a forked child's first call opens its own session
        with self._lock:
            self._check_usable()
            entry = self._core.add(call.task_uuid, frame, call.expected, call)
            if call.deadline is not None:
                heapq.heappush(self._timers, (call.deadline, next(self._counter), call))
                if self._timers[0][2] is call:
                    self._wake.set()  # the earliest deadline now: re-arm the timer
            call.state = "connection"
            conn, attempt = self._claim(entry)
        if attempt is not None:
            assert conn is not None
            self._write(conn, [(entry, attempt)])

    def abandon(self, call: Call[Any], error: BaseException) -> None:
        """Forget ``call``'s task (timed out or abandoned) and fail it with ``error``."""
        with self._lock:
            entry = self._core.remove(call.task_uuid)
        if entry is not None and entry.owner is not call:  # pragma: no cover - a bug
            raise AssertionError("task UUID reused by another call")
        call.fail(error)

    def expire(self, call: Call[Any]) -> None:
        """Fail ``call`` with a RequestTimeoutError saying what it was waiting for.

        A call whose frame is still being written (a large upload on a stalled or
        slow link) cannot return while its thread is in the send, and a frame cut
        off halfway cannot be taken back: the connection is aborted (the send
        fails at once) and the client reconnects and resumes.
        """
        if call.done():
            return
        writing = call.writing
        if writing is not None:
            logger.warning(
                "the frame of task %s was not written within its timeout: reconnecting",
                call.task_uuid,
            )
            writing.abort()
        if call.state == "results":
            message = (
                f"task {call.task_uuid}: {call.received} of {call.expected} results "
                f"arrived before the timeout"
            )
        elif call.state == "connection":
            message = (
                f"task {call.task_uuid} was not sent: not connected within the timeout "
                f"(state {self._state.value})"
            )
        else:
            # The upload still running, or the one that just failed (its own deadline
            # may have expired it first).
            late = [u.task_uuid for u in call.blocker if not u.done() or u.error() is not None] or [
                call.task_uuid
            ]
            message = (
                f"task {call.task_uuid} was not sent: the upload of its input (task "
                f"{late[0]}) did not finish within the timeout"
            )
            error = RequestTimeoutError(message, task_uuid=late[0])
            self.abandon(call, error)
            return
        error = RequestTimeoutError(message, task_uuid=call.task_uuid)
        if call.state == "connection" and self._last_error is not None:
            error.__cause__ = self._last_error
        self.abandon(call, error)

    def close(self, timeout: float = 2.0) -> None:
        """Close the connection, fail every waiting call, and stop the threads. Idempotent."""
        with self._lock:
            if self._state is State.CLOSED:
                return
            conn, self._conn = self._conn, None
            failed = self._core.fail_all()
            self._timers.clear()
            draining = list(self._draining)
            self._draining.clear()
            listeners = self._enter(State.CLOSED)
        self._wake.set()
        self._fail(
            failed, lambda e: ClientClosedError(f"client closed while task {e.task_uuid} waited")
        )
        for old in draining:
            old.abort()
        if conn is not None:
            conn.close(timeout)
        for old in draining:
            old.close(timeout)
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
        self._emit(listeners, State.CLOSED)
        self.dispatcher.stop(timeout)
        _LIVE.discard(self)

    # -- internals: state --------------------------------------------------------------

    def _check_usable(self) -> None:
        # Called with _lock held.
        if self._state is State.CLOSED:
            raise ClientClosedError("the client is closed")
        if self._state is State.FAILED:
            error = self._last_error
            if isinstance(error, AuthenticationError):
                raise AuthenticationError(str(error), error_id=error.error_id) from error
            raise ConnectionFailedError(f"the client has failed: {error}") from error

    def _set_state(self, state: State) -> None:
        with self._lock:
            listeners = self._enter(state)
        self._emit(listeners, state)

    def _enter(self, state: State) -> list[StateListener]:
        # Called with _lock held: change state, return the listeners to call
        # (after the lock is released).
        self._state = state
        return list(self._listeners)

    def _emit(self, listeners: list[StateListener], state: State) -> None:
        for listener in listeners:
            self.dispatcher.post(lambda listener=listener: listener(state))  # type: ignore[misc]

    def _fail(
        self, entries: list[Entry[Call[Any]]], error: Callable[[Entry[Call[Any]]], BaseException]
    ) -> None:
        """Fail the calls of ``entries`` (already forgotten by the core), each with its error.

        The one place where waiting calls fail, whatever the reason.
        """
        for entry in entries:
            entry.owner.fail(error(entry))

    # -- internals: sending ----------------------------------------------------------------

    def _claim(self, entry: Entry[Call[Any]]) -> tuple[Connection | None, int | None]:
        # Called with _lock held: hand the task to the current connection if there is one.
        if self._state is not State.CONNECTED or self._conn is None:
            return None, None
        attempt = self._core.hand_over(entry)
        if attempt is not None:
            entry.owner.state = "results"
        return self._conn, attempt

    def _write(self, conn: Connection, batch: list[tuple[Entry[Call[Any]], int]]) -> None:
        """Write the frames of tasks handed to ``conn``; on failure, mark the rest unsent."""
        for index, (entry, _) in enumerate(batch):
            call = entry.owner
            call.sent_at = time.monotonic()
            call.writing = conn  # expire() aborts a send that outlives the call's deadline
            try:
                conn.send(entry.frame)
            except ConnectionFailedError as exc:
                with self._lock:
                    for unsent, attempt in batch[index:]:
                        if self._core.send_failed(unsent, attempt):
                            unsent.owner.state = "connection"
                self._send_failed(conn, exc)
                return
            finally:
                call.writing = None
            logger.debug(
                "sent %s task %s: %d result(s) expected", call.kind, call.task_uuid, call.expected
            )

    # -- internals: receiving --------------------------------------------------------------

    def _route(self, conn: Connection, event: protocol.Event) -> None:
        # Runs on the reader thread, which must outlive any one event: a failure here
        # (a bug) costs that event only, and is logged. One short locked step, then
        # the calls are told (they never block the reader).
        try:
            if not isinstance(event, _RESULTS):
                if isinstance(event, protocol.Invalid):
                    conn.warn(
                        logger, "a frame cannot be decoded (it names %d task(s)): %s",
                        len(event.task_uuids), event.error,
                    )  # fmt: skip
                elif isinstance(event, protocol.ServerError):
                    if event.task_uuid is None:
                        conn.warn(
                            logger, "server error (errorId %s): %s",
                            event.error_id, event.error_message,
                        )  # fmt: skip
                        return
                elif isinstance(event, protocol.Unknown):
                    logger.debug("ignoring unknown frame %r", event.key)
                    return
                else:  # Pong, SessionEstablished: nothing to route
                    return
            with self._lock:
                unrouted = self._core.unrouted
                deliveries = self._core.receive(event)
                if deliveries:
                    self._healthy = True
                dropped = self._core.unrouted - unrouted
            for delivery in deliveries:
                self._deliver(delivery)
            if dropped:
                logger.debug("dropped %d result(s) that no call waits for", dropped)
        except Exception:
            logger.exception("could not route a %s event; dropped it", type(event).__name__)

    @staticmethod
    def _deliver(delivery: Delivery[Call[Any]]) -> None:
        call = delivery.entry.owner
        if delivery.error is not None:
            call.fail(delivery.error)
            return
        call.push(delivery.items, delivery.complete)
        if delivery.complete and call.sent_at is not None:
            logger.debug(
                "completed %s task %s: %d item(s) in %.3f s",
                call.kind, call.task_uuid, call.expected, time.monotonic() - call.sent_at,
            )  # fmt: skip

    # -- internals: connections ---------------------------------------------------------

    def _install(self, transport: Any, session_uuid: str) -> None:
        """Make an authenticated transport the current connection, then act on the resume."""
        conn = Connection(
            transport, session_uuid, on_event=self._route, on_lost=self._connection_lost
        )
        with self._lock:
            if self._state is State.CLOSED:
                transport.close()
                return
            old_uuid = self._core.session_uuid
            resume = self._core.connected(
                session_uuid, resend_unanswered=self._reconnect.resend_unanswered
            )
            # Connection, session and state change together (a drop reported by the new
            # reader is never taken for a drop of an older one), and before any call
            # learns what the resume cost it.
            self._conn = conn
            self._healthy = False
            self._ping_sent_at = None
            self._connected_at = time.monotonic()
            for entry in resume.to_send:
                entry.owner.state = "results"
            listeners = self._enter(State.CONNECTED)
        conn.start()
        self._emit(listeners, State.CONNECTED)
        if old_uuid is not None:
            if resume.resumed:
                logger.info("session %s resumed", session_uuid)
            else:
                uuids = [e.task_uuid for e in resume.expired]
                logger.warning(
                    "session %s expired (new session %s); %d waiting tasks lost%s",
                    old_uuid, session_uuid, len(uuids), f": {', '.join(uuids)}" if uuids else "",
                )  # fmt: skip
                self._fail(resume.expired, lambda e: SessionExpiredError(
                    f"the server no longer knows session {old_uuid}: the results of task "
                    f"{e.task_uuid} are lost (it may have been billed; it was not re-sent)",
                    task_uuids=uuids,
                ))  # fmt: skip
        else:
            logger.info("connected to %s, session %s", self._url, session_uuid)
        if resume.to_send:
            logger.debug("sending %d task(s) that waited for the connection", len(resume.to_send))
            self._write(conn, [(entry, entry.attempt) for entry in resume.to_send])

    def _connection_lost(self, conn: Connection, reason: BaseException | None) -> None:
        # The reader's last act: its socket has ended.
        conn.abort()
        with self._lock:
            self._draining.pop(conn, None)
        self._mark_lost(conn, reason)

    def _send_failed(self, conn: Connection, reason: BaseException) -> None:
        # A send failed: the link is dead, but frames the server wrote before it died
        # may still wait unread in the socket. Aborting now would throw them away (and
        # the server counts them as delivered), so the reader drains them and ends on
        # the error that follows; the supervisor aborts it if it is still there after
        # the heartbeat timeout (a link that died silently), and close() does at once.
        if conn.reading:
            with self._lock:
                self._draining[conn] = time.monotonic() + self._heartbeat.timeout
        self._wake.set()
        self._mark_lost(conn, reason)

    def _mark_lost(self, conn: Connection, reason: BaseException | None) -> None:
        # The current connection is gone: reconnect (or fail, if reconnecting is off).
        with self._lock:
            if self._conn is not conn or self._state is not State.CONNECTED:
                return
            self._conn = None
            self._last_error = _detached(reason) if reason is not None else None
            self._lost_at = now = time.monotonic()
            # Backoff starts over only after a connection that proved healthy: it
            # carried results, or stayed up for a while.
            if self._healthy or now - self._connected_at >= max(1.0, self._reconnect.max_delay):
                self._backoff.reset()
            if self._reconnect.enabled:
                new_state = State.RECONNECTING
                failed: list[Entry[Call[Any]]] = []
            else:
                new_state = State.FAILED
                failed = self._core.fail_all()
            listeners = self._enter(new_state)
        logger.info("lost the connection: %s", reason)
        self._fail(failed, lambda e: _caused(ConnectionFailedError(
            f"connection lost while task {e.task_uuid} waited"), reason))  # fmt: skip
        self._emit(listeners, new_state)
        self._wake.set()

    def _after_fork(self) -> None:
        # In a forked child (one thread, at fork time): the parent's socket and threads
        # are not ours. Close our copies of its file descriptors without shutting the
        # shared sockets down, and start afresh: the first call opens a new session.
        closed = self._state is State.CLOSED
        for conn in [self._conn, *self._draining]:
            if conn is not None:
                conn.transport.detach()
        self._init_runtime()
        if closed:
            self._state = State.CLOSED

    # -- internals: the supervisor thread ---------------------------------------------------

    def _run(self) -> None:
        internal_thread.active = True
        try:
            while True:
                with self._lock:
                    state, conn = self._state, self._conn
                if state in (State.CLOSED, State.FAILED):
                    return
                waits = [self._reap_draining(), self._expire_due()]
                if state is State.RECONNECTING:
                    self._recover()
                    continue
                if conn is not None:
                    waits.append(self._beat(conn))
                timeouts = [w for w in waits if w is not None]
                self._wake.wait(min(timeouts) if timeouts else None)
                self._wake.clear()
        except BaseException as exc:  # a bug: never leave calls waiting on a dead thread
            logger.exception("supervisor thread failed; the client has failed for good")
            try:
                self._fail_for_good(exc)
            except BaseException:  # pragma: no cover - a bug in the failing itself
                logger.exception("could not fail the waiting calls")

    def _fail_for_good(self, error: BaseException) -> None:
        # The terminal state: every waiting call fails now, every later call at once.
        with self._lock:
            if self._state is State.CLOSED:
                return
            self._last_error = _detached(error)
            failed = self._core.fail_all()
            self._timers.clear()
            conn, self._conn = self._conn, None
            draining = list(self._draining)
            self._draining.clear()
            listeners = self._enter(State.FAILED)
        for old in draining:
            old.abort()
        if isinstance(error, AuthenticationError):
            self._fail(failed, lambda e: _caused(AuthenticationError(
                str(error), error_id=error.error_id), error))  # fmt: skip
        else:
            self._fail(failed, lambda e: _caused(ConnectionFailedError(
                f"the client has failed: {error}"), error))  # fmt: skip
        if conn is not None:
            conn.abort()
        self._emit(listeners, State.FAILED)

    def _expire_due(self) -> float | None:
        """Expire calls past their deadline; return seconds until the next deadline."""
        now = time.monotonic()
        due = []
        with self._lock:
            timers = self._timers
            while timers and (timers[0][0] <= now or timers[0][2].done()):
                due.append(heapq.heappop(timers)[2])
            later = timers[0][0] - now if timers else None
        for call in due:
            self.expire(call)
        return later

    def _reap_draining(self) -> float | None:
        """Abort draining connections past their time; return seconds until the next one."""
        now = time.monotonic()
        with self._lock:
            due = [c for c, deadline in self._draining.items() if deadline <= now]
            for conn in due:
                del self._draining[conn]
            later = [deadline - now for deadline in self._draining.values()]
        for conn in due:
            logger.debug("aborting a connection that did not end after a failed send")
            conn.abort()
        return min(later) if later else None

    def _beat(self, conn: Connection) -> float | None:
        """One heartbeat step; return the seconds until the next one is due.

        Signs of life are bytes, not frames: ``conn.last_received`` moves while a
        large frame is still arriving, so a slow 40 MB result is not taken for a
        dead link. This step never blocks: the ping is sent only if that cannot
        wait (on a send in progress, or on a full socket buffer); when it cannot,
        the probe still starts, and then the link must show life by bytes arriving
        or by the stuck send making progress. A link that shows none for
        ``timeout`` after the probe is dead: abort() wakes the stuck send too.
        """
        interval = self._heartbeat.interval
        if interval is None:
            return None
        now = time.monotonic()
        sent_at = self._ping_sent_at
        if sent_at is not None:
            alive = conn.last_received
            if not self._ping_written:
                alive = max(alive, conn.last_sent)  # the stuck send moved after all
            if alive >= sent_at:
                self._ping_sent_at = sent_at = None
            elif now - sent_at >= self._heartbeat.timeout:
                logger.info(
                    "no sign of life for %.1f s after a ping: connection is dead", now - sent_at
                )
                conn.abort()
                return None
            else:
                return sent_at + self._heartbeat.timeout - now
        idle_since = min(conn.last_received, conn.last_sent)
        if now - idle_since < interval:
            return idle_since + interval - now
        self._ping_sent_at = now
        try:
            self._ping_written = conn.try_send(protocol.encode(protocol.Ping()))
        except ConnectionFailedError as exc:
            self._send_failed(conn, exc)
            return None
        # Look again when the answer is due, or sooner when the next ping is.
        return min(interval, self._heartbeat.timeout)

    def _recover(self) -> None:
        """Reconnect (resuming the session) until connected, closed or refused."""
        self._wake.clear()  # the drop that brought us here set it
        window = Deadline(
            max(0.0, self._lost_at + self._reconnect.resume_window - time.monotonic())
        )
        given_up = False
        for attempt in itertools.count(1):
            delay = self._backoff.next()
            if delay > 0:
                # Wait, but keep expiring calls meanwhile (their deadlines do not wait).
                end = time.monotonic() + delay
                while (left := end - time.monotonic()) > 0:
                    next_timer = self._expire_due()
                    if self._wake.wait(left if next_timer is None else min(left, next_timer)):
                        self._wake.clear()
                    if self._state is State.CLOSED:
                        return
            else:
                self._expire_due()
            if self._state is State.CLOSED:
                return
            logger.info(
                "reconnecting to %s (attempt %d, after %.2f s): %s",
                self._url, attempt, delay, self._last_error,
            )  # fmt: skip
            try:
                transport, session_uuid = authenticate(
                    self._url, self._api_key, self._core.session_uuid,
                    timeout=self._connect_timeout, options=self._options,
                )  # fmt: skip
            except AuthenticationError as exc:
                logger.warning("reconnect refused: %s; not retrying", exc)
                self._fail_for_good(exc)
                return
            except Exception as exc:
                # Any other failure (the network, or a reply we cannot read, however
                # malformed) is one failed attempt: logged, backed off, retried.
                logger.log(
                    logging.INFO if isinstance(exc, ConnectionFailedError) else logging.WARNING,
                    "reconnect attempt failed (attempt %d): %s: %s",
                    attempt, type(exc).__name__, exc,
                )  # fmt: skip
                self._last_error = _detached(exc)
                if window.expired() and not given_up:
                    given_up = True
                    self._give_up(exc)
                continue
            self._install(transport, session_uuid)
            return

    def _give_up(self, reason: BaseException) -> None:
        # The resume window has passed: the results of sent tasks are gone.
        with self._lock:
            lost = self._core.window_passed()
        window = self._reconnect.resume_window
        logger.warning(
            "could not reconnect within the %g s resume window; %d waiting tasks failed",
            window, len(lost),
        )  # fmt: skip
        self._fail(lost, lambda e: _caused(ConnectionFailedError(
            f"could not reconnect within {window:g} s; the results of task "
            f"{e.task_uuid} are lost (the task may have been billed)"), reason))  # fmt: skip


def _caused(error: BaseException, cause: BaseException | None) -> BaseException:
    error.__cause__ = cause
    return error
