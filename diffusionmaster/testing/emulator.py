"""The public emulator: a local DiffusionMaster server for tests, demos and notebooks.

:class:`Emulator` runs the whole of protocol.md (sessions, resume, take-over,
heartbeat, idle close, every task type, image URLs over HTTP) on the
``websockets`` asyncio server, in one daemon thread named
``diffusionmaster-emulator``. Pillow work runs in up to two worker threads
named ``diffusionmaster-emulator-worker_N``. :meth:`Emulator.close` joins them all.

Every received frame is validated (:mod:`diffusionmaster.testing.validation`;
error ids in :class:`~diffusionmaster.testing.ErrorId`). Faults are injected
with public methods, and tests wait for server-side facts with
:meth:`Emulator.wait_for` instead of sleeping::

    with Emulator(resume_window=0.5) as emu:
        ...  # connect a client to emu.url
        emu.drop_connections()
        assert emu.wait_for(lambda: emu.connection_count == 1, timeout=5)

Behaviour where protocol.md leaves a choice:

* Results: images are real (JPEG for generation, PNG for uploads and most
  edits), rendered deterministically from prompt and seed, lazily on first
  fetch. ``cost`` is 0.0013 per image, ``imageAltText`` is the prompt without
  its ``-no`` part, ``totalAvailableResults`` is ``offset + numberResults``,
  ``bNSFWContent`` is true only when ``checkNsfw`` is set and the prompt
  contains "nsfw".
* Result frames (results and task errors) are buffered per session and sent
  in order; a frame cut by a drop is sent again after the resume
  (at-least-once: clients drop repeats by ``imageUUID``, house rule 5).
* Every ``taskUUID`` read in a session is answered once (house rule 6), even
  when its first answer was an error.
* Invalid frames are answered with an error frame; the real service sends no
  answer at all to some (e.g. an unknown ``modelId``).
* A first frame that is not ``newConnection`` (nor a ping) gets errorId 19
  ("Invalid API key: the first frame must be newConnection") and close 1008.
  ``{"ping": true}`` is answered before authentication too.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import copy
import logging
import threading
from collections.abc import Callable, Coroutine, Iterable
from dataclasses import dataclass
from types import TracebackType
from typing import Any, TypeVar

from diffusionmaster.testing._server import Core
from diffusionmaster.testing.images import ImageStore
from diffusionmaster.testing.messages import FrameError

__all__ = ["Emulator", "SessionInfo"]

logger = logging.getLogger("diffusionmaster.testing.emulator")

_T = TypeVar("_T")
_CALL_TIMEOUT = 10.0  # bounds every hop onto the loop; it only blocks if the loop is stuck


@dataclass(frozen=True)
class SessionInfo:
    """A snapshot of one session, as :attr:`Emulator.sessions` reports it.

    Attributes:
        uuid: the ``connectionSessionUUID``.
        connected: whether a connection is attached now.
        buffered: result frames waiting to be sent (buffered or withheld).
        running_tasks: tasks still producing results.
        seen_tasks: distinct ``taskUUID`` s received in this session.
    """

    uuid: str
    connected: bool
    buffered: int
    running_tasks: int
    seen_tasks: int


class Emulator:
    """A DiffusionMaster server on 127.0.0.1, in a background thread.

    Thread-safe: every public method may be called from any thread except the
    emulator's own. Methods that change the server hop onto its event loop and
    return once the change is made (waiting at most 10 s).

    Args:
        api_keys: the accepted API keys (a single string is one key).
        host: the address to listen on (one address).
        port: the TCP port; 0 picks a free one, kept across :meth:`restart`.
        resume_window: seconds a session stays resumable after its last
            connection closed (house rule 1; protocol: 120).
        idle_timeout: seconds without a frame from the client after which a
            connection is closed (house rule 7; protocol: 120). WebSocket
            control pings do not count; ``{"ping": true}`` does.
        latency: seconds before each image, text or upload result is produced.
        images_per_frame: items per result frame (images, or texts of the
            prompt enhancer): 8 images at 3 per frame come as 3, 3, 2.

    Raises:
        ValueError: a negative time or ``images_per_frame`` < 1.
    """

    def __init__(
        self,
        api_keys: Iterable[str] = ("test-key",),
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        resume_window: float = 120.0,
        idle_timeout: float = 120.0,
        latency: float = 0.0,
        images_per_frame: int = 1,
    ) -> None:
        self._api_keys = [api_keys] if isinstance(api_keys, str) else list(api_keys)
        self._host = host
        self._initial_port = port
        self.resume_window = resume_window
        self.idle_timeout = idle_timeout
        self.latency = latency
        self.images_per_frame = images_per_frame
        self.image_bytes = 0
        # Guards the observed state; re-entrant so wait_for predicates may use properties.
        self._cond = threading.Condition(threading.RLock())
        self._lifecycle = threading.Lock()  # serialises start() and close()
        self._store = ImageStore()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._core: Core | None = None
        self._closed = False

    # ---------------------------------------------------------------- settings

    @property
    def latency(self) -> float:
        """Seconds before each image (or text, or upload result) is produced; settable."""
        return self._latency

    @latency.setter
    def latency(self, value: float) -> None:
        self._latency = _non_negative("latency", value)

    @property
    def images_per_frame(self) -> int:
        """How many images (or texts) go into one result frame; settable, >= 1."""
        return self._images_per_frame

    @images_per_frame.setter
    def images_per_frame(self, value: int) -> None:
        self._images_per_frame = _int_at_least("images_per_frame", value, 1)

    @property
    def image_bytes(self) -> int:
        """Pad each generated image file with zero bytes to this size; settable, 0: off.

        For benchmarks of large results (``returnBase64Image``): the file stays a
        valid JPEG (decoders ignore bytes after its end marker).
        """
        return self._image_bytes

    @image_bytes.setter
    def image_bytes(self, value: int) -> None:
        self._image_bytes = _int_at_least("image_bytes", value, 0)

    @property
    def resume_window(self) -> float:
        """Seconds a disconnected session stays resumable; settable (applies to later closes)."""
        return self._resume_window

    @resume_window.setter
    def resume_window(self, value: float) -> None:
        self._resume_window = _non_negative("resume_window", value)

    @property
    def idle_timeout(self) -> float:
        """Seconds without a client frame before the server closes; settable (applies at
        the next check of each connection)."""
        return self._idle_timeout

    @idle_timeout.setter
    def idle_timeout(self, value: float) -> None:
        self._idle_timeout = _non_negative("idle_timeout", value)

    # ---------------------------------------------------------------- lifecycle

    def start(self) -> Emulator:
        """Start listening; returns at once when already started.

        Returns:
            The emulator itself.

        Raises:
            RuntimeError: the emulator was closed.
            OSError: the port could not be bound.
        """
        with self._lifecycle:
            if self._closed:
                raise RuntimeError("this Emulator is closed; create a new one")
            if self._loop is not None:
                return self
            loop = asyncio.new_event_loop()
            thread = threading.Thread(
                target=_run_loop, args=(loop,), name="diffusionmaster-emulator", daemon=True
            )
            thread.start()
            self._loop, self._thread = loop, thread
            self._executor = concurrent.futures.ThreadPoolExecutor(
                max_workers=2, thread_name_prefix="diffusionmaster-emulator-worker"
            )
            try:
                self._run(self._open())
            except BaseException:
                self._stop_thread()
                self._closed = True
                raise
        logger.debug("emulator listening on %s", self.url)
        return self

    async def _open(self) -> None:
        # Core is built on the loop so its asyncio objects belong to that loop.
        self._core = Core(
            asyncio.get_running_loop(), self._cond, self,
            lambda: (self._resume_window, self._idle_timeout), self._api_keys, self._store,
            self._in_worker, self._host,
        )  # fmt: skip
        self._core.port = self._initial_port
        await self._core.listen()

    async def _in_worker(self, fn: Callable[[], _T]) -> _T:
        assert self._loop is not None and self._executor is not None
        return await self._loop.run_in_executor(self._executor, fn)

    def close(self) -> None:
        """Stop the server, abort its connections, and join its threads (idempotent).

        Connections are aborted without a close frame; sessions, buffers and
        running tasks are discarded. Observation methods keep working. Takes
        milliseconds; waits at most about 10 s for a stuck loop.

        Raises:
            RuntimeError: called from the emulator's own thread.
        """
        self._check_not_loop_thread()
        with self._lifecycle:
            if self._closed:
                return
            self._closed = True
            if self._loop is None:
                return
            try:
                self._run(self._core_or_raise().shutdown())
            except Exception:
                logger.exception("emulator shutdown failed; stopping its loop anyway")
            self._stop_thread()
        with self._cond:
            self._cond.notify_all()

    def _stop_thread(self) -> None:
        loop, thread, executor = self._loop, self._thread, self._executor
        assert loop is not None and thread is not None and executor is not None
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=5.0)
        if thread.is_alive():
            logger.warning("the emulator thread did not stop within 5 s")
        executor.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> Emulator:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else "running" if self._loop else "not started"
        where = f" {self.url}" if self._core is not None else ""
        return f"<Emulator{where} {state}>"

    @property
    def port(self) -> int:
        """The TCP port (bound at start, kept across restarts)."""
        return self._core_or_raise().port

    @property
    def url(self) -> str:
        """The WebSocket URL, ``ws://127.0.0.1:<port>/v1/``."""
        return self._core_or_raise().http_url.replace("http://", "ws://", 1) + "/v1/"

    @property
    def http_url(self) -> str:
        """The base of image URLs, ``http://127.0.0.1:<port>``."""
        return self._core_or_raise().http_url

    # ---------------------------------------------------------------- plumbing

    def _core_or_raise(self) -> Core:
        if self._core is None:
            raise RuntimeError("the Emulator is not started; call start() or use `with`")
        return self._core

    def _check_not_loop_thread(self) -> None:
        if threading.current_thread() is self._thread:
            raise RuntimeError("this Emulator method cannot be called from its own thread")

    def _run(self, coro: Coroutine[Any, Any, _T]) -> _T:
        loop = self._loop
        if loop is None or self._thread is None or not self._thread.is_alive():
            coro.close()
            raise RuntimeError("the Emulator is not running; call start() or use `with`")
        self._check_not_loop_thread()
        return asyncio.run_coroutine_threadsafe(coro, loop).result(timeout=_CALL_TIMEOUT)

    def _call(self, fn: Callable[..., _T], *args: Any) -> _T:
        async def call() -> _T:
            return fn(*args)

        return self._run(call())

    # ---------------------------------------------------------------- faults

    def drop_connections(self) -> None:
        """Abort every live connection without a close frame (TCP closed abruptly).

        Sessions survive and stay resumable for ``resume_window``; their tasks
        keep running and their results are buffered.
        """
        self._call(self._core_or_raise().drop_connections)

    def drop_after_results(self, n: int) -> None:
        """Drop every connection (as :meth:`drop_connections`) after the next ``n``
        result frames have been sent, over all connections. One-shot.

        Result frames are the frames of tasks (results and task errors); a
        duplicated frame counts twice.

        Raises:
            ValueError: ``n`` < 1.
        """
        self._call(setattr, self._core_or_raise(), "drop_after", _int_at_least("n", n, 1))

    def restart(self, keep_sessions: bool = True) -> None:
        """Stop listening, abort all connections, then listen again on the same port.

        A freeze ends with the restart; other injected faults stay as set.
        Images stay available.

        Args:
            keep_sessions: keep sessions, their buffers and running tasks
                (resumable as usual); False forgets them all, so a resume gets
                a new session UUID.
        """
        core = self._core_or_raise()

        async def restart() -> None:
            await core.stop_listening()
            if not keep_sessions:
                core.forget_sessions(lambda session: True)
            await core.listen()

        self._run(restart())

    def expire_sessions(self) -> None:
        """Forget every session now, connected or not, with its buffer and running tasks.

        Connections attached to a session are aborted (no close frame), as if
        the server had lost them; resuming any of these sessions then gets a
        new session UUID. Connections not yet authenticated are left alone.
        """
        self._call(self._core_or_raise().forget_sessions, lambda session: True)

    def freeze(self) -> None:
        """Make the server unresponsive while keeping TCP connections open.

        While frozen the server reads nothing from its connections (so it also
        answers no WebSocket control ping, no ``{"ping": true}``), sends nothing
        (results produced meanwhile are held) and closes nothing on its own
        (idle closing waits). New connections are accepted by TCP but their
        HTTP handshake waits for :meth:`thaw` (and times out after 10 s).
        Running tasks go on. :meth:`drop_connections` still works.
        """
        self._call(self._core_or_raise().freeze)

    def thaw(self) -> None:
        """End a freeze: pending input is read and held frames are sent in order.

        The idle clock of each connection restarts at the thaw.
        """
        self._call(self._core_or_raise().thaw)

    def delay_frames(self, seconds: float) -> None:
        """Wait ``seconds`` before sending each result frame (0 turns it off).

        Raises:
            ValueError: a negative delay.
        """
        delay = _non_negative("seconds", seconds)
        core = self._core_or_raise()

        def apply() -> None:
            core.delay = delay
            core.kick_all()

        self._call(apply)

    def duplicate_frames(self, enabled: bool = True) -> None:
        """Send every result frame twice (until called with ``enabled=False``)."""
        self._call(setattr, self._core_or_raise(), "duplicate", bool(enabled))

    def miss_disconnects(self, enabled: bool = True) -> None:
        """Do not notice connections that end without a close frame (a half-open link).

        Such a connection stays attached to its session, so results stay buffered and
        the client's resume is a take-over (house rule 2, counted by :attr:`takeovers`).
        """
        self._call(setattr, self._core_or_raise(), "miss_disconnects", bool(enabled))

    def withhold_frames(self) -> None:
        """Hold every result frame (kept in order, per session) until :meth:`release_frames`."""
        self._call(setattr, self._core_or_raise(), "withheld", True)

    def release_frames(self) -> None:
        """Send the frames held by :meth:`withhold_frames`, and stop holding."""
        core = self._core_or_raise()

        def apply() -> None:
            core.withheld = False
            core.kick_all()

        self._call(apply)

    def revoke_key(self, key: str) -> None:
        """Refuse ``key`` from now on: its next ``newConnection`` gets errorId 19 and close 1008.

        Connections already authenticated with it stay open.
        """
        self._call(self._change_keys, key, False)

    def add_key(self, key: str) -> None:
        """Accept ``key`` from now on."""
        self._call(self._change_keys, key, True)

    def _change_keys(self, key: str, accept: bool) -> None:
        keys = self._core_or_raise().keys
        with self._cond:
            if accept:
                keys.add(key)
            else:
                keys.discard(key)

    def fail_next_task(self, error_id: int = 500, message: str = "injected failure") -> None:
        """Answer the next task received (any session) with an error frame instead of results.

        The frame is ``{"error": true, "errorId": error_id, "errorMessage": message,
        "taskUUID": <its taskUUID>}``. The task is not validated nor run. One-shot.
        """
        error = FrameError(error_id, message)
        self._call(setattr, self._core_or_raise(), "fail_next", error)

    def lose_next_task(self) -> None:
        """Swallow the next task received (any session), as if lost on the way. One-shot.

        The frame shows in :meth:`received_frames`, but the server neither
        registers its ``taskUUID``, nor validates, runs or answers it: a later
        re-send with the same ``taskUUID`` runs normally.
        """
        self._call(setattr, self._core_or_raise(), "lose_next", True)

    def send_raw(self, text: str) -> int:
        """Send ``text``, as it is, in one text frame to every authenticated connection.

        For hostile-server tests: the text need not be JSON, nor a frame the
        protocol knows. It is sent at once, outside the order of result frames.

        Returns:
            How many connections it was sent to.
        """
        core = self._core_or_raise()
        return self._run(core.send_raw(str(text)))

    def bad_auth_reply(self, text: str, times: int = 1) -> None:
        """Answer the next ``times`` ``newConnection`` frames with ``text``, as it is.

        Such a connection is left open and unauthenticated: no session is created,
        resumed or taken over, and no session reply follows (the client must give the
        attempt up). Later ``newConnection`` frames are answered as usual.

        Raises:
            ValueError: ``times`` < 1.
        """
        count = _int_at_least("times", times, 1)
        core = self._core_or_raise()
        self._call(core.auth_replies.extend, [str(text)] * count)

    # ---------------------------------------------------------------- observation

    def received_frames(self) -> list[dict[str, Any]]:
        """Return a copy of every JSON object received from clients, in order."""
        with self._cond:
            return copy.deepcopy(self._core.received) if self._core else []

    @property
    def received_count(self) -> int:
        """How many JSON objects were received (cheaper than ``len(received_frames())``)."""
        with self._cond:
            return len(self._core.received) if self._core else 0

    def clear_received(self) -> None:
        """Forget the frames recorded so far (for :meth:`received_frames`)."""
        with self._cond:
            if self._core is not None:
                self._core.received.clear()

    def wait_for(self, predicate: Callable[[], bool], timeout: float) -> bool:
        """Wait until ``predicate()`` is true, re-checking at each server state change.

        State changes: a frame received, a connection opened or closed, a
        session created, resumed or forgotten, a task started or finished, a
        result frame produced or sent.
        The predicate runs under the emulator's lock: keep it short and
        non-blocking (reading this emulator's properties is fine).

        Args:
            predicate: what to wait for.
            timeout: seconds to wait at most.

        Returns:
            The predicate's last value (False when the timeout passed first).
        """
        self._check_not_loop_thread()
        with self._cond:
            return self._cond.wait_for(predicate, timeout)

    @property
    def connection_count(self) -> int:
        """Live WebSocket connections now (authenticated or not)."""
        with self._cond:
            return len(self._core.connections) if self._core else 0

    @property
    def connections_opened(self) -> int:
        """WebSocket connections accepted since start."""
        with self._cond:
            return self._core.connections_opened if self._core else 0

    @property
    def results_sent(self) -> int:
        """Result frames sent so far (a duplicated frame counts twice)."""
        with self._cond:
            return self._core.results_sent if self._core else 0

    @property
    def takeovers(self) -> int:
        """Resumes that found the session still attached to an older connection, which
        was closed in favour of the new one (house rule 2)."""
        with self._cond:
            return self._core.takeovers if self._core else 0

    @property
    def api_keys(self) -> frozenset[str]:
        """The keys accepted now."""
        with self._cond:
            return frozenset(self._core.keys) if self._core else frozenset(self._api_keys)

    def session_uuids(self) -> list[str]:
        """The UUIDs of the sessions the server holds now, oldest first."""
        with self._cond:
            return list(self._core.sessions) if self._core else []

    @property
    def sessions(self) -> dict[str, SessionInfo]:
        """A snapshot of the sessions the server holds now, by session UUID."""
        with self._cond:
            if self._core is None:
                return {}
            return {
                s.uuid: SessionInfo(
                    uuid=s.uuid,
                    connected=s.connection is not None,
                    buffered=len(s.outbox),
                    running_tasks=sum(1 for t in s.tasks if not t.done()),
                    seen_tasks=len(s.seen),
                )
                for s in self._core.sessions.values()
            }

    @property
    def image_count(self) -> int:
        """Images the server holds (uploaded or produced)."""
        return len(self._store)


def _int_at_least(name: str, value: int, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
    return value


def _non_negative(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
        raise ValueError(f"{name} must be a number >= 0, got {value!r}")
    return float(value)


def _run_loop(loop: asyncio.AbstractEventLoop) -> None:
    asyncio.set_event_loop(loop)
    try:
        loop.run_forever()
    finally:
        # Cancel what is left (tasks, pending closes) so the loop closes cleanly.
        tasks = asyncio.all_tasks(loop)
        for task in tasks:
            task.cancel()
        if tasks:
            loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()
