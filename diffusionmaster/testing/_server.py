"""The emulator's asyncio core: connections, sessions, delivery and faults.

Everything here runs on the emulator's event loop thread, except the readers
of the observed state (see :class:`Core`), which take ``cond``.

Threading invariants:

* Only the loop thread mutates state. Each mutation that another thread may
  read (received frames, connections, sessions and their buffers, counters)
  happens under ``cond`` and is followed by ``cond.notify_all()``, so
  ``Emulator.wait_for`` wakes on every change.
* ``cond`` is held only for short, non-blocking sections: never across an
  ``await``, so the loop never waits for a test thread and vice versa.

Delivery: every frame a task produces (results and task errors, the "result
frames") goes into its session's buffer (``Session.outbox``); one pump task
per session sends the buffer in order to the session's current connection.
A frame leaves the buffer only once it has been handed whole to the operating
system on the connection that is still the session's; a frame cut by a drop or
a take-over is sent again after the resume (at-least-once; clients drop
repeated ``imageUUID`` s per house rule 5). Control frames (session reply,
pong, errors without ``taskUUID``) go straight to their connection.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
import socket
import threading
import uuid
import weakref
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.protocol import State

from diffusionmaster.testing._http import image_response
from diffusionmaster.testing._logs import websockets_logger
from diffusionmaster.testing._tasks import Knobs, TaskRunner, Worker
from diffusionmaster.testing.images import ImageStore
from diffusionmaster.testing.messages import ErrorId, FrameError
from diffusionmaster.testing.validation import (
    decode_frame,
    message_key,
    read_task_uuid,
    validate_task,
)

logger = logging.getLogger("diffusionmaster.testing.emulator")

_NOT_AUTHENTICATED = "Invalid API key: the first frame must be newConnection"
_CLOSE_TIMEOUT = 2.0  # bounds a close handshake with a peer that no longer answers
_DROP_GRACE = 1.0  # a dropped connection's socket is aborted this long after its FIN


@dataclass(eq=False)
class Connection:
    """One WebSocket connection (after the HTTP upgrade)."""

    ws: ServerConnection
    last_rx: float
    session: Session | None = None
    ready: bool = False  # the session reply was sent: the pump may deliver to it
    alive: bool = True  # False once we close or abort it: further input is ignored


@dataclass(eq=False)
class Session:
    """One session: survives its connections for ``resume_window`` seconds."""

    uuid: str
    api_key: str
    pump: asyncio.Task[None] | None = None
    connection: Connection | None = None
    outbox: collections.deque[tuple[int, str]] = field(default_factory=collections.deque)
    seen: set[str] = field(default_factory=set)
    tasks: set[asyncio.Task[None]] = field(default_factory=set)
    expiry: asyncio.TimerHandle | None = None
    kick: asyncio.Event = field(default_factory=asyncio.Event)
    alive: bool = True


class Core:
    """The server state and protocol logic (loop thread only, see the module docstring).

    Attributes read by other threads under ``cond``: ``received``, ``connections``,
    ``connections_opened``, ``sessions``, ``results_sent``, ``takeovers``.
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        cond: threading.Condition,
        knobs: Knobs,
        timing: Callable[[], tuple[float, float]],
        api_keys: Iterable[str],
        store: ImageStore,
        in_worker: Worker,
        host: str,
    ) -> None:
        self.loop = loop
        self.cond = cond
        self.timing = timing  # () -> (resume_window, idle_timeout), read at each use
        self.keys = set(api_keys)
        self.store = store
        self.in_worker = in_worker
        self.host = host
        self.port = 0
        self.runner = TaskRunner(store, knobs, lambda: self.http_url, in_worker)
        self.server: Server | None = None
        # Observed state (written under cond).
        self.received: list[dict[str, Any]] = []
        self.connections: set[Connection] = set()
        self.connections_opened = 0
        self.sessions: dict[str, Session] = {}
        self.results_sent = 0
        self.takeovers = 0
        # Faults (loop thread only).
        self.thawed = asyncio.Event()
        self.thawed.set()
        self.withheld = False
        self.delay = 0.0
        self.duplicate = False
        self.miss_disconnects = False
        self.drop_after: int | None = None
        self.fail_next: FrameError | None = None
        self.lose_next = False
        #: texts that answer the next newConnection frames instead of the session reply
        self.auth_replies: collections.deque[str] = collections.deque()
        self.background: set[asyncio.Task[Any]] = set()
        # Every connection that sent an HTTP request, so plain GETs can be aborted at stop.
        self.http_connections: weakref.WeakSet[ServerConnection] = weakref.WeakSet()
        self._seq = 0

    @property
    def http_url(self) -> str:
        """``http://host:port`` of the running server."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    # ---------------------------------------------------------------- lifecycle

    async def listen(self) -> None:
        """Start listening (on ``self.port``; 0 picks a free port, then kept)."""
        self.server = await serve(
            self._handle,
            self.host,
            self.port,
            process_request=self._process_request,
            compression=None,  # permessage-deflate is optional (§1) and costs CPU on big frames
            ping_interval=None,  # idle closing is house rule 7; no server pings to freeze
            close_timeout=_CLOSE_TIMEOUT,
            max_size=None,  # uploads of 10+ MB base64
            write_limit=0,  # send() returns once the frame is with the OS (see delivery)
            logger=websockets_logger(),  # frames at DEBUG, API keys masked
        )
        self.port = self.server.sockets[0].getsockname()[1]

    async def stop_listening(self) -> None:
        """Stop listening and abort every connection (sessions are kept)."""
        self.thaw()  # a stopped server is not frozen; also releases handshakes waiting on it
        server, self.server = self.server, None
        if server is None:
            return
        server.close(close_connections=False)
        self.drop_connections()
        for ws in list(self.http_connections):
            ws.transport.abort()  # an image GET whose client keeps the socket open
        try:
            await asyncio.wait_for(server.wait_closed(), 5.0)
        except asyncio.TimeoutError:
            logger.warning("connection handlers still running after 5 s; cancelling them")
            for task in list(server.handler_tasks):
                task.cancel()

    async def shutdown(self) -> None:
        """Stop everything: listening, connections, sessions, tasks."""
        await self.stop_listening()
        self.forget_sessions(lambda session: True)
        for task in list(self.background):
            task.cancel()

    def spawn(self, coro: Any) -> None:
        """Run a coroutine in the background; it is cancelled at shutdown."""
        task = self.loop.create_task(coro)
        self.background.add(task)
        task.add_done_callback(self.background.discard)

    # ---------------------------------------------------------------- HTTP

    async def _process_request(self, ws: ServerConnection, request: Any) -> Any:
        self.http_connections.add(ws)
        await self.thawed.wait()
        path = request.path.split("?", 1)[0]
        upgrade = "websocket" in request.headers.get("Upgrade", "").lower()
        if path.rstrip("/") == "/v1":
            return None  # the WebSocket endpoint; websockets answers 426 to a plain GET
        if upgrade:
            return ws.respond(404, "Not Found: the WebSocket endpoint is /v1/\n")
        return await image_response(ws, path, self.store, self.in_worker)

    # ---------------------------------------------------------------- connections

    async def _handle(self, ws: ServerConnection) -> None:
        conn = Connection(ws, self.loop.time())
        with self.cond:
            self.connections.add(conn)
            self.connections_opened += 1
            self.cond.notify_all()
        if not self.thawed.is_set():
            ws.transport.pause_reading()
        idle = self.loop.create_task(self._idle_watch(conn))
        try:
            async for message in ws:
                if not self.thawed.is_set():
                    await self._until_thawed_or_closed(ws)
                if not conn.alive:
                    # Dropped (abort_connection): read and discard until the client
                    # closes. Closing with unread input would send a TCP reset, and a
                    # reset throws away our last frames if the kernel still held them.
                    continue
                conn.last_rx = self.loop.time()
                await self._on_message(conn, message)
        except ConnectionClosed:
            pass
        except Exception:
            logger.exception("connection handler failed")
        finally:
            idle.cancel()
            with self.cond:
                self.connections.discard(conn)
                if not (self.miss_disconnects and ws.protocol.close_rcvd is None):
                    self._detach(conn)
                # else: a half-open link (miss_disconnects): the session keeps this dead
                # connection until a resume takes it over; frames for it stay buffered,
                # since sending on it fails.
                self.cond.notify_all()

    async def _until_thawed_or_closed(self, ws: ServerConnection) -> None:
        # A connection dropped while frozen must still end now, so that
        # connection_count and the session's state are right during the freeze.
        waits = {self.loop.create_task(self.thawed.wait()), self.loop.create_task(ws.wait_closed())}
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in waits:
                task.cancel()

    async def _idle_watch(self, conn: Connection) -> None:
        while conn.alive:
            remaining = conn.last_rx + self.timing()[1] - self.loop.time()
            if remaining > 0:
                await asyncio.sleep(remaining)
            elif not self.thawed.is_set():
                await self.thawed.wait()  # thaw() restarts the idle clocks
            else:
                logger.debug("closing a connection idle for %.3f s", self.timing()[1])
                self.close_connection(conn, 1000, "idle timeout")

    def close_connection(self, conn: Connection, code: int, reason: str) -> None:
        """Start a closing handshake; does not wait for it."""
        conn.alive = False
        self.spawn(conn.ws.close(code, reason))

    def abort_connection(self, conn: Connection) -> None:
        """Cut the connection at once, without a close frame.

        What was already handed to the OS still reaches the client, as bytes already
        on the wire would when a link fails: the socket is shut down for writing (a
        FIN after those bytes) rather than reset, since a reset would discard them
        in the kernel (which may still hold them, corked) after they were counted as
        delivered. Input from now on is read and ignored (``alive`` is False), so
        frames the client sends meanwhile are lost like frames sent into a dead
        link, and the socket is not closed with unread input (which would reset it).
        The transport is aborted after a grace period, in case the client never
        closes its end.
        """
        conn.alive = False
        transport = conn.ws.transport
        sock = transport.get_extra_info("socket")
        if sock is None or transport.is_closing():
            transport.abort()
            return
        try:
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            transport.abort()
            return
        self.loop.call_later(_DROP_GRACE, transport.abort)

    def drop_connections(self) -> None:
        """Abort every live connection (sessions survive)."""
        for conn in list(self.connections):
            self.abort_connection(conn)

    async def _send(self, conn: Connection, frame: dict[str, Any]) -> None:
        with contextlib.suppress(ConnectionClosed):  # the handler sees the close too
            await conn.ws.send(json.dumps(frame))

    async def _send_text(self, conn: Connection, text: str) -> None:
        with contextlib.suppress(ConnectionClosed):  # the handler sees the close too
            await conn.ws.send(text)

    async def send_raw(self, text: str) -> int:
        """Send ``text`` as one text frame to every authenticated connection; return how many."""
        targets = [conn for conn in self.connections if conn.alive and conn.ready]
        for conn in targets:
            await self._send_text(conn, text)
        return len(targets)

    # ---------------------------------------------------------------- messages

    async def _on_message(self, conn: Connection, message: str | bytes) -> None:
        try:
            frame = decode_frame(message)
        except FrameError as exc:
            await self._send(conn, exc.to_frame())
            return
        with self.cond:
            self.received.append(frame)
            self.cond.notify_all()
        try:
            key = message_key(frame)
        except FrameError as exc:
            await self._send(conn, exc.to_frame())
            return
        body = frame[key]
        if key == "ping":
            await self._send(conn, {"pong": True})
        elif conn.session is None:
            if key == "newConnection" and self.auth_replies:
                await self._send_text(conn, self.auth_replies.popleft())  # a fault (bad_auth_reply)
            elif key == "newConnection":
                await self._authenticate(conn, body)
            else:
                await self._reject(conn, _NOT_AUTHENTICATED)
        elif key == "newConnection":
            error = FrameError(
                ErrorId.ALREADY_AUTHENTICATED, "newConnection: already authenticated"
            )
            await self._send(conn, error.to_frame())
        else:
            await self._on_task(conn, conn.session, key, body)

    async def _reject(self, conn: Connection, message: str) -> None:
        conn.alive = False
        await self._send(conn, FrameError(ErrorId.INVALID_API_KEY, message).to_frame())
        self.close_connection(conn, 1008, "Invalid API key")

    async def _authenticate(self, conn: Connection, body: Any) -> None:
        key = body.get("apiKey") if isinstance(body, dict) else None
        if not isinstance(key, str) or key not in self.keys:
            await self._reject(conn, "Invalid API key")
            return
        unknown = sorted(set(body) - {"apiKey", "connectionSessionUUID"})
        if unknown:
            logger.debug("newConnection: ignoring unknown fields %s", unknown)
        wanted = body.get("connectionSessionUUID")
        if wanted is not None and not isinstance(wanted, str):
            conn.alive = False
            error = FrameError(ErrorId.INVALID_FIELD, "connectionSessionUUID: must be a string")
            await self._send(conn, error.to_frame())
            self.close_connection(conn, 1008, "invalid newConnection")
            return
        with self.cond:
            session = self.sessions.get(wanted) if wanted else None
            if session is not None and session.api_key != key:
                session = None  # another key's session is not resumable (nor revealed)
            if session is None:
                session = Session(str(uuid.uuid4()), key)
                session.pump = self.loop.create_task(self._pump(session))
                self.sessions[session.uuid] = session
                logger.debug("new session %s", session.uuid)
            else:
                logger.debug("resuming session %s", session.uuid)
            old = session.connection
            if old is not None:  # house rule 2: take-over; the client gave that link up
                self.takeovers += 1
                old.session = None
                self.close_connection(old, 1000, "session resumed on another connection")
            if session.expiry is not None:
                session.expiry.cancel()
                session.expiry = None
            conn.session = session
            session.connection = conn
            self.cond.notify_all()
        await self._send(
            conn, {"newConnectionSessionUUID": {"connectionSessionUUID": session.uuid}}
        )
        # Only now may buffered frames follow: the reply comes first (house rule 1).
        conn.ready = True
        session.kick.set()

    def _detach(self, conn: Connection) -> None:
        # Called under cond when a connection ended.
        session, conn.session = conn.session, None
        if session is None or session.connection is not conn:
            return
        session.connection = None
        window = self.timing()[0]
        session.expiry = self.loop.call_later(window, self._expire, session)

    def _expire(self, session: Session) -> None:
        if session.connection is None:
            logger.debug("session %s expired", session.uuid)
            self.forget_sessions(lambda s: s is session)

    def forget_sessions(self, which: Callable[[Session], bool]) -> None:
        """Forget sessions: cancel their tasks, drop their buffers, abort their connections."""
        with self.cond:
            for session in [s for s in self.sessions.values() if which(s)]:
                del self.sessions[session.uuid]
                session.alive = False
                session.outbox.clear()
                for task in session.tasks:
                    task.cancel()
                if session.pump is not None:
                    session.pump.cancel()
                if session.expiry is not None:
                    session.expiry.cancel()
                conn, session.connection = session.connection, None
                if conn is not None:
                    conn.session = None
                    self.abort_connection(conn)
            self.cond.notify_all()

    async def _on_task(self, conn: Connection, session: Session, key: str, body: Any) -> None:
        if self.lose_next:  # lost in transit: not registered, so a re-send runs (rule 6)
            self.lose_next = False
            logger.debug("losing a %s frame, as injected", key)
            return
        task_uuid = read_task_uuid(body)
        if task_uuid is not None:
            if task_uuid in session.seen:  # house rule 6
                logger.debug("ignoring repeated taskUUID %s", task_uuid)
                return
            with self.cond:
                session.seen.add(task_uuid)
                self.cond.notify_all()
        if self.fail_next is not None:
            error, self.fail_next = self.fail_next, None
            self.emit(session, FrameError(error.error_id, error.message, task_uuid).to_frame())
            return
        api_key = session.api_key
        try:
            request = validate_task(key, body, lambda image: self.store.exists(image, api_key))
        except FrameError as exc:
            if exc.task_uuid is None:
                await self._send(conn, exc.to_frame())  # concerns the connection (rule 4)
            else:
                self.emit(session, exc.to_frame())
            return
        task = self.loop.create_task(
            self.runner.run(request, api_key, lambda frame: self.emit(session, frame))
        )
        with self.cond:
            session.tasks.add(task)
            self.cond.notify_all()
        task.add_done_callback(lambda done: self._task_done(session, done))

    def _task_done(self, session: Session, task: asyncio.Task[None]) -> None:
        with self.cond:
            session.tasks.discard(task)
            self.cond.notify_all()

    # ---------------------------------------------------------------- delivery

    def emit(self, session: Session, frame: dict[str, Any]) -> None:
        """Queue a result frame for a session (discarded when the session is gone)."""
        if not session.alive:
            return
        text = json.dumps(frame)
        with self.cond:
            self._seq += 1
            session.outbox.append((self._seq, text))
            self.cond.notify_all()
        session.kick.set()

    def kick_all(self) -> None:
        """Wake every pump (after thaw, release, or a change of delay)."""
        for session in list(self.sessions.values()):
            session.kick.set()

    def _deliverable(self, session: Session) -> Connection | None:
        conn = session.connection
        if (
            not session.outbox or conn is None or not conn.ready or not conn.alive
            or self.withheld or not self.thawed.is_set()
        ):  # fmt: skip
            return None
        return conn

    async def _pump(self, session: Session) -> None:
        # The only sender of result frames of this session: order is kept by construction.
        delayed = 0  # seq of the head frame whose delay has been served
        while session.alive:
            await session.kick.wait()
            session.kick.clear()
            while (conn := self._deliverable(session)) is not None:
                seq, text = session.outbox[0]
                if self.delay > 0 and delayed != seq:
                    await asyncio.sleep(self.delay)
                    delayed = seq
                    continue  # conditions may have changed while sleeping
                try:
                    delivered = await self._deliver(session, conn, text)
                except Exception:  # keep the session's delivery alive whatever happened
                    logger.exception("sending a result frame failed")
                    delivered = False
                if not delivered:
                    break  # the connection went away: wait for the next one
                with self.cond:
                    if session.outbox and session.outbox[0][0] == seq:
                        session.outbox.popleft()
                    self.cond.notify_all()

    async def _deliver(self, session: Session, conn: Connection, text: str) -> bool:
        delivered = False
        for _ in range(2 if self.duplicate else 1):
            try:
                await conn.ws.send(text)
            except ConnectionClosed:
                return delivered
            if conn.ws.state is not State.OPEN or session.connection is not conn or not conn.alive:
                return delivered  # may not have reached the client: keep it buffered
            delivered = True
            with self.cond:
                self.results_sent += 1
                self.cond.notify_all()
            if self.drop_after is not None:
                self.drop_after -= 1
                if self.drop_after <= 0:
                    self.drop_after = None
                    logger.debug("dropping connections after results, as injected")
                    self.drop_connections()
                    return True
        return delivered

    # ---------------------------------------------------------------- freeze

    def freeze(self) -> None:
        """Stop reading and sending on every connection (TCP stays open)."""
        self.thawed.clear()
        for conn in list(self.connections):
            conn.ws.transport.pause_reading()

    def thaw(self) -> None:
        """End a freeze: read and send again; idle clocks restart now."""
        if self.thawed.is_set():
            return
        self.thawed.set()
        now = self.loop.time()
        for conn in list(self.connections):
            conn.last_rx = now
            if not conn.ws.transport.is_closing():
                conn.ws.transport.resume_reading()
        self.kick_all()
