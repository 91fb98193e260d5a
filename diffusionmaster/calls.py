"""Call handles: one task in flight, completed by the reader, waited on by anyone.

A :class:`Call` costs a few hundred bytes and no thread. The reader thread (through
the supervisor) pushes the task's new items into it and completes or fails it;
a blocking method waits on it with :meth:`Call.wait`; a
:class:`~concurrent.futures.Future` is completed from it by a done-callback.

Threading invariants:

- ``_lock`` guards every field that changes. The reader only appends, sets and
  notifies under it: it never blocks there, and never runs a callback.
- A call ends in two steps. Whoever ends it (a result, an error, a timeout) sets
  ``_ending`` under the lock, so only one of them goes on; it accounts for the
  call's usage, and only then sets ``_done`` and lets the waiters go. So when a
  call is seen done, by any path, the client's usage includes it.
- Waiting for the end costs no condition variable: ``_latch`` is a lock held from
  the start and released once, when the call is done; a waiter acquires it and
  releases it at once, which lets the next waiter through. (A ``Condition``'s wait
  and notify are Python code on the critical path of every call: bench "latency"
  read 1.27x with the latch against 1.27x to 1.31x before.) Only :meth:`Call.stream`, which wakes for every item,
  makes a ``Condition``, on first use.
- Done-callbacks (internal chaining, Futures, and through them user callbacks)
  run on the dispatcher thread (``diffusionmaster-events``), in completion order:
  never on the reader, which must only block on its socket.
- A call completes or fails exactly once; later pushes and failures are ignored.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar

from . import usage
from .connection import Connection, internal_thread
from .usage import UsageMeter

logger = logging.getLogger("diffusionmaster.calls")

__all__ = ["Call", "Dispatcher"]

R = TypeVar("R")


class Dispatcher:
    """Runs callbacks on one thread of the client, in order; never blocks the caller.

    The thread (``diffusionmaster-events``) starts on first use. A callback that
    raises is logged and the next one runs.
    """

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[Callable[[], object] | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._stopped = False

    def post(self, fn: Callable[[], object]) -> None:
        """Run ``fn()`` on the dispatcher thread, after everything posted before it."""
        with self._lock:
            if self._stopped:
                return
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="diffusionmaster-events", daemon=True
                )
                self._thread.start()
        self._queue.put(fn)

    def _run(self) -> None:
        internal_thread.active = True
        while (fn := self._queue.get()) is not None:
            try:
                fn()
            except Exception:
                logger.exception("callback %r failed", fn)
            del fn  # hold nothing while waiting for the next one

    def stop(self, timeout: float) -> None:
        """Run what was posted, then end the thread (waiting up to ``timeout``)."""
        with self._lock:
            self._stopped = True
            thread = self._thread
        self._queue.put(None)
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)


class Call(Generic[R]):
    """One task of the client: its items as they arrive, then its result or error.

    Thread-safe. ``item`` turns each raw protocol item into what the caller sees
    (an :class:`~diffusionmaster.Image`, a text...); ``adapt`` turns the list of
    those into the call's result.
    """

    __slots__ = (
        "_adapt", "_callbacks", "_cond", "_dispatch", "_done", "_ending", "_error", "_item", "_items",
        "_latch", "_lock", "_result", "blocker", "deadline", "expected", "kind", "meters", "raw", "sent_at", "state",
        "task_uuid", "writing",
    )  # fmt: skip

    def __init__(
        self,
        task_uuid: str,
        kind: str,
        expected: int,
        *,
        item: Callable[[Any], Any],
        adapt: Callable[[list[Any]], R],
        dispatch: Callable[[Callable[[], object]], None],
        deadline: float | None,
        meters: tuple[UsageMeter, ...] = (),
    ) -> None:
        self.task_uuid = task_uuid
        self.kind = kind
        self.expected = expected
        #: monotonic end of the call's deadline (None: no limit)
        self.deadline = deadline
        #: what the call waits for: "uploads", "connection" (unsent), "results"
        self.state = "uploads"
        self.sent_at: float | None = None
        #: the connection a thread is writing the call's frame to right now (else None);
        #: set and cleared by that thread alone, read by whoever expires the call
        self.writing: Connection | None = None
        #: while uploading: the calls of the uploads it waits for
        self.blocker: list[Call[Any]] = []
        #: the raw protocol items, in arrival order (for accounting)
        self.raw: list[Any] = []
        self._item = item
        self._adapt = adapt
        self._dispatch = dispatch
        self._lock = threading.Lock()
        self._latch = threading.Lock()
        self._latch.acquire()  # released once, when the call ends
        #: made by the first stream(), which waits for each item
        self._cond: threading.Condition | None = None
        self._items: list[Any] = []
        self._ending = False  # set by whoever ends the call, once
        self._done = False  # set after the usage is counted
        self._error: BaseException | None = None
        self._result: Any = None
        self._callbacks: list[Callable[[Call[R]], object]] = []
        #: what the call's usage is added to when it ends
        self.meters = meters

    def __repr__(self) -> str:
        return f"<Call {self.kind} {self.task_uuid} {len(self._items)}/{self.expected}>"

    # -- fed by the client's threads -----------------------------------------------------

    def push(self, items: tuple[Any, ...], complete: bool) -> None:
        """New distinct items arrived (on the reader thread); ``complete``: all are here."""
        converted = [self._item(raw) for raw in items]
        with self._lock:
            if self._ending:
                return
            self.raw.extend(items)
            self._items.extend(converted)
            if complete:
                try:
                    self._result = self._adapt(list(self._items))
                except Exception as exc:  # pragma: no cover - an adapter bug
                    self._error = exc
                self._ending = True
            if self._cond is not None:
                self._cond.notify_all()
        if complete:
            self._finished()

    def fail(self, error: BaseException) -> bool:
        """Fail the call with ``error`` unless it is done; return True if it was failed."""
        with self._lock:
            if self._ending:
                return False
            self._error = error
            self._ending = True
        self._finished()
        return True

    def add_done_callback(self, fn: Callable[[Call[R]], object]) -> None:
        """Call ``fn(call)`` on the dispatcher thread once the call is done."""
        with self._lock:
            if not self._done:
                self._callbacks.append(fn)
                return
        self._dispatch(lambda: fn(self))

    def _finished(self) -> None:
        # Once, by whoever set _ending: account for the call, mark it done (so that
        # the client's usage includes every call seen done), let the waiters go,
        # then schedule the callbacks.
        try:
            if self.meters:
                used = usage.FAILED if self._error is not None else usage.of_items(self.raw)
                for meter in self.meters:
                    meter.add(used)
        finally:  # whatever happened, the call is done and its waiters go
            with self._lock:
                self._done = True
                callbacks, self._callbacks = self._callbacks, []
                if self._cond is not None:
                    self._cond.notify_all()
            self._latch.release()
        for fn in callbacks:
            self._dispatch(lambda fn=fn: fn(self))  # type: ignore[misc]

    # -- read by whoever waits ------------------------------------------------------------

    def done(self) -> bool:
        """True once the call has its result or its error (it may still be counting its
        usage for a moment: :meth:`wait` and :meth:`outcome` wait for that too)."""
        return self._ending

    def remaining(self) -> float | None:
        """Seconds until the call's deadline (never negative), or None."""
        if self.deadline is None:
            return None
        return max(0.0, self.deadline - time.monotonic())

    def wait(self, timeout: float | None) -> bool:
        """Wait until done, its usage counted, or ``timeout`` seconds; return whether it is."""
        if self._done:
            return True
        if self._latch.acquire(timeout=-1 if timeout is None else timeout):
            self._latch.release()  # the next waiter's turn
        return self._done

    def outcome(self) -> R:
        """The result of a done call, or raise its error."""
        if not self._done:
            assert self._ending, "outcome() of a call that is not done"
            self.wait(None)  # ended by another thread, which is counting its usage
        if self._error is not None:
            raise self._error
        result: R = self._result
        return result

    def error(self) -> BaseException | None:
        """The error of a done call (None if it succeeded or is not done)."""
        return self._error

    @property
    def received(self) -> int:
        """How many distinct items arrived so far."""
        return len(self._items)

    def stream(self, timeout: Callable[[], float | None]) -> Iterator[Any]:
        """Yield each item as it arrives, until done; then raise the call's error, if any.

        ``timeout()`` gives the seconds left each time it must wait; when a wait
        runs out, the iteration stops (the caller decides what a timeout means).
        """
        index = 0
        while True:
            with self._lock:
                if self._cond is None:
                    self._cond = threading.Condition(self._lock)
                cond = self._cond
                while index >= len(self._items) and not self._done:
                    if not cond.wait(timeout()):
                        return
                fresh = self._items[index:]
                done, error = self._done, self._error
            index += len(fresh)
            yield from fresh
            if done and index >= len(self._items):
                if error is not None:
                    raise error
                return
