"""Many tasks, a bounded number in flight, no thread per task.

A :class:`Batch` takes any number of tasks at once and keeps at most
``max_in_flight`` of them on the wire; the rest wait, unsent (and cancellable),
as entries in a queue. Each task has its own
:class:`~concurrent.futures.Future`, so results can be read in order or as they
complete, and one task's error never aborts the others.
"""

from __future__ import annotations

import collections
import concurrent.futures
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any

from ._validate import integer
from .errors import InvalidArgumentError
from .usage import Usage, UsageMeter

if TYPE_CHECKING:
    from .client import Client
    from .tasks import TaskSpec

__all__ = ["Batch"]


class Batch:
    """A group of tasks run with at most ``max_in_flight`` in flight. Thread-safe.

    Made by :meth:`Client.batch`. :meth:`submit` never blocks: a task is sent
    when fewer than ``max_in_flight`` of the batch's tasks are in flight. A
    task's own timeout starts when it is sent. Use it as a context manager to
    wait for every task at the end of the block (or, when the block raises, to
    cancel the tasks not yet sent)::

        with client.batch(max_in_flight=100) as batch:
            futures = [batch.submit(client.text2img, p) for p in prompts]
            for future in batch.as_completed():
                ...

    Progress for tqdm: ``tqdm(batch.as_completed(), total=len(batch))``.
    """

    def __init__(self, client: Client, max_in_flight: int = 64) -> None:
        self._client = client
        self.max_in_flight = integer("max_in_flight", max_in_flight, 1)
        # _lock guards _queue, _in_flight and _pumping (never held across I/O).
        self._lock = threading.Lock()
        self._queue: collections.deque[tuple[Future[Any], TaskSpec[Any]]] = collections.deque()
        self._futures: list[Future[Any]] = []
        self._in_flight = 0
        self._pumping = False
        self._usage = UsageMeter()

    def __enter__(self) -> Batch:
        return self

    def __exit__(self, exc_type: object, *_: object) -> None:
        if exc_type is not None:
            self.cancel()
        else:
            concurrent.futures.wait(list(self._futures))

    def __len__(self) -> int:
        return len(self._futures)

    @property
    def usage(self) -> Usage:
        """Tasks, images and cost of this batch's tasks so far."""
        return self._usage.total

    @property
    def in_flight(self) -> int:
        """How many of the batch's tasks are sent and not yet done."""
        return self._in_flight

    def submit(self, method: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        """Queue a call of a task method of the client; return its Future.

        Arguments are checked now: a bad one fails this task's Future (with
        :class:`~diffusionmaster.InvalidArgumentError`) and nothing is sent for it.

        Raises:
            InvalidArgumentError: ``method`` is not a task method of this batch's client.
        """
        spec_of = self._client._spec_of(method)
        if spec_of is None:
            raise InvalidArgumentError(
                "method", f"must be a task method of this client, got {method!r}"
            )
        future: Future[Any] = Future()
        self._futures.append(future)
        try:
            spec = spec_of(*args, **kwargs)
        except Exception as exc:
            future.set_running_or_notify_cancel()
            future.set_exception(exc)
            return future
        with self._lock:
            self._queue.append((future, spec))
        self._pump()
        return future

    def cancel(self) -> int:
        """Cancel every task not yet sent; return how many were cancelled."""
        with self._lock:
            queued, self._queue = list(self._queue), collections.deque()
        return sum(future.cancel() for future, _ in queued)

    def as_completed(self, timeout: float | None = None) -> Iterator[Future[Any]]:
        """Yield the Futures of the tasks submitted so far, as they finish.

        Raises:
            TimeoutError: ``timeout`` seconds passed before all finished.
        """
        return concurrent.futures.as_completed(list(self._futures), timeout)

    def results(
        self, timeout: float | None = None, *, return_exceptions: bool = False
    ) -> list[Any]:
        """Wait for every task; return their results in submission order.

        Args:
            timeout: seconds for the whole wait (None: no limit).
            return_exceptions: put a failed task's exception in its place instead
                of raising the first one.

        Raises:
            TimeoutError: ``timeout`` passed first.
            Exception: the first failed task's error, unless ``return_exceptions``.
        """
        end = None if timeout is None else time.monotonic() + timeout
        out: list[Any] = []
        for future in list(self._futures):
            left = None if end is None else max(0.0, end - time.monotonic())
            if return_exceptions:
                concurrent.futures.wait([future], left)
                if not future.done():
                    raise TimeoutError(f"batch not done within {timeout} s")
                error = None if future.cancelled() else future.exception()
                out.append(error if error is not None else future.result())
            else:
                out.append(future.result(left))
        return out

    # -- internals -------------------------------------------------------------------

    def _pump(self) -> None:
        # Start queued tasks while there is room. One thread pumps at a time; a
        # thread that finds another pumping leaves it to that one, which checks the
        # room again (under the lock) before it stops.
        with self._lock:
            if self._pumping:
                return
            self._pumping = True
        while True:
            with self._lock:
                started = None
                while self._queue and self._in_flight < self.max_in_flight:
                    future, spec = self._queue.popleft()
                    if future.set_running_or_notify_cancel():
                        self._in_flight += 1
                        started = future, spec
                        break
                if started is None:
                    self._pumping = False
                    return
            self._client._start_future(*started, meters=(self._usage,), on_done=self._finished)

    def _finished(self) -> None:
        with self._lock:
            self._in_flight -= 1
        self._pump()
