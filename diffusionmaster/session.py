"""The session core: every decision about tasks in flight, and no I/O.

In the spirit of websockets' ``Protocol``: :class:`SessionCore` has no sockets,
threads or clock. The supervisor (which owns those) registers each task with
the frame that starts it and the number of distinct items that complete it,
tells the core when frames are handed to a connection, feeds it every decoded
event, and tells it how a reconnect ended. The core answers with decisions:
which task received which new items, which tasks are complete, which failed,
which expired, which must be (re-)sent. It raises nothing at the caller's
behest and never calls anyone back: the supervisor acts on what it returns.

Rules it keeps (protocol §9, "house rules"):

- Results are routed by ``taskUUID``; a result for a task nobody waits for is
  dropped (counted in :attr:`SessionCore.unrouted`).
- A task is complete when it has received ``expected`` *distinct* items; an
  item seen before (same image UUID, text, or uploaded UUID) is a repeat from a
  resumed session and is dropped (house rule 5). A complete task is forgotten,
  so nothing is delivered twice.
- A task error (an error frame with the task's UUID) fails that task alone; a
  frame that could not be decoded but names tasks (:class:`protocol.Invalid`)
  fails those tasks with its :class:`~diffusionmaster.ProtocolError`; the items
  of that frame that did decode are delivered to their tasks as usual.
- After a reconnect: the same session UUID means a resume, and tasks go on
  waiting (optionally, unanswered ones are re-sent, same task UUID, so the
  server runs each at most once: house rule 6); a different UUID means the
  server forgot the session, and exactly the tasks sent in the old one expire.
  Tasks never sent are sent in whatever session comes.

Not thread-safe: the supervisor calls it with its lock held.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, Generic, TypeVar

import attrs

from . import protocol
from .errors import ProtocolError, TaskError

__all__ = ["Delivery", "Entry", "Resume", "SessionCore"]

O = TypeVar("O")  # noqa: E741 - the owner type


class Entry(Generic[O]):
    """One task in flight, as the core sees it."""

    __slots__ = (
        "answered",
        "attempt",
        "expected",
        "frame",
        "owner",
        "seen",
        "session",
        "task_uuid",
    )

    def __init__(self, task_uuid: str, frame: str, expected: int, owner: O) -> None:
        self.task_uuid = task_uuid
        self.frame = frame
        self.expected = expected
        #: what the supervisor hands decisions about this task to (a call handle)
        self.owner = owner
        #: the session the frame was last handed to; None while unsent
        self.session: str | None = None
        #: counts hand-overs, so a failed send can tell whether it was the last one
        self.attempt = 0
        #: keys of the distinct items received (house rule 5)
        self.seen: set[str] = set()
        #: True once anything (item or error) arrived for it
        self.answered = False

    def __repr__(self) -> str:
        state = f"sent in {self.session}" if self.session else "unsent"
        return f"<Entry {self.task_uuid} {len(self.seen)}/{self.expected} {state}>"


@attrs.define  # not frozen: one is made for every result, and frozen init costs twice
class Delivery(Generic[O]):
    """What one event means for one task (read-only by convention)."""

    entry: Entry[O]
    #: the new distinct items, in arrival order (repeats removed)
    items: tuple[Any, ...] = ()
    #: the task failed with this error (it is forgotten)
    error: Exception | None = None
    #: the task has all its items now (it is forgotten)
    complete: bool = False


@attrs.frozen
class Resume(Generic[O]):
    """How a (re)connection ended for the tasks in flight."""

    #: True when the server kept the session (same UUID)
    resumed: bool
    #: tasks sent in a session the server forgot: their results are lost (forgotten)
    expired: list[Entry[O]]
    #: tasks to send now, in this order (never sent, or re-sent on request); each is
    #: already marked as handed to the new session
    to_send: list[Entry[O]]


def item_key(item: Any) -> str:
    """The identity of a result item, for dropping repeats (house rule 5)."""
    if isinstance(item, protocol.ImageItem):
        return item.image_uuid
    if isinstance(item, protocol.TextItem):
        return item.text
    if isinstance(item, (protocol.UploadResult, protocol.PreprocessResult)):
        return item.new_image_uuid
    raise TypeError(f"not a result item: {type(item).__name__}")


def _items(event: protocol.Event) -> Sequence[Any]:
    """The result items of ``event``, in order; each has its ``task_uuid``."""
    if isinstance(event, protocol.ImagesResult):
        return event.images
    if isinstance(event, protocol.TextsResult):
        return event.texts
    if isinstance(event, (protocol.UploadResult, protocol.PreprocessResult)):
        return (event,)
    return ()


class SessionCore(Generic[O]):
    """Tasks in flight and the session they belong to. Pure; not thread-safe."""

    def __init__(self) -> None:
        self._tasks: dict[str, Entry[O]] = {}
        #: the session UUID of the current (or last) connection
        self.session_uuid: str | None = None
        #: results that named no task in flight (late, abandoned, or bogus)
        self.unrouted = 0

    def __len__(self) -> int:
        return len(self._tasks)

    def __contains__(self, task_uuid: object) -> bool:
        return task_uuid in self._tasks

    def entries(self) -> list[Entry[O]]:
        """Every task in flight, in registration order."""
        return list(self._tasks.values())

    # -- tasks ----------------------------------------------------------------------

    def add(self, task_uuid: str, frame: str, expected: int, owner: O) -> Entry[O]:
        """Register a task before its frame is sent (so no reply can race past it)."""
        if task_uuid in self._tasks:
            raise ValueError(f"task {task_uuid} is already in flight")
        if expected < 1:
            raise ValueError(f"task {task_uuid}: expected must be >= 1, got {expected}")
        entry = self._tasks[task_uuid] = Entry(task_uuid, frame, expected, owner)
        return entry

    def remove(self, task_uuid: str) -> Entry[O] | None:
        """Forget a task (abandoned or timed out); later results for it are dropped."""
        return self._tasks.pop(task_uuid, None)

    def hand_over(self, entry: Entry[O]) -> int | None:
        """Mark ``entry`` as handed to the current session; return the attempt number.

        Returns None when there is nothing to send: the task is gone, has been
        handed over already, or there is no session yet.
        """
        if self._tasks.get(entry.task_uuid) is not entry or entry.session is not None:
            return None
        if self.session_uuid is None:
            return None
        entry.session = self.session_uuid
        entry.attempt += 1
        return entry.attempt

    def send_failed(self, entry: Entry[O], attempt: int) -> bool:
        """The hand-over ``attempt`` did not leave: mark the task unsent again.

        Returns False when a later hand-over has happened meanwhile (a resume
        re-sent it), so the task must not be marked unsent.
        """
        if self._tasks.get(entry.task_uuid) is not entry or entry.attempt != attempt:
            return False
        entry.session = None
        return True

    # -- events -----------------------------------------------------------------------

    def receive(self, event: protocol.Event) -> list[Delivery[O]]:
        """What ``event`` means for the tasks in flight."""
        if isinstance(event, protocol.ServerError):
            return self._fail_named(
                [event.task_uuid] if event.task_uuid is not None else [],
                lambda uuid: TaskError(
                    event.error_message, task_uuid=uuid, error_id=event.error_id
                ),
            )
        if isinstance(event, protocol.Invalid):
            error = event.error
            failed = self._fail_named(list(event.task_uuids), lambda uuid: _invalid(error, uuid))
            # The items of the frame that did decode go to their tasks as usual (items
            # of a task just failed count as unrouted).
            return failed + (self.receive(event.valid) if event.valid is not None else [])
        fresh: dict[str, list[Any]] = {}
        for item in _items(event):
            task_uuid = item.task_uuid
            entry = self._tasks.get(task_uuid)
            if entry is None:
                self.unrouted += 1
                continue
            entry.answered = True
            key = item_key(item)
            if key in entry.seen:
                continue  # a repeat (house rule 5)
            entry.seen.add(key)
            fresh.setdefault(task_uuid, []).append(item)
        deliveries = []
        for task_uuid, items in fresh.items():
            entry = self._tasks[task_uuid]
            complete = len(entry.seen) >= entry.expected
            if complete:
                del self._tasks[task_uuid]
                # More items than asked for would be the server's excess: keep the
                # first ``expected`` distinct ones.
                extra = len(entry.seen) - entry.expected
                if extra:
                    items = items[: len(items) - extra]
            deliveries.append(Delivery(entry, tuple(items), complete=complete))
        return deliveries

    def _fail_named(self, task_uuids: Iterable[str], error: Any) -> list[Delivery[O]]:
        deliveries = []
        for task_uuid in task_uuids:
            entry = self._tasks.pop(task_uuid, None)
            if entry is None:
                self.unrouted += 1
                continue
            entry.answered = True
            deliveries.append(Delivery(entry, error=error(task_uuid)))
        return deliveries

    # -- connections ----------------------------------------------------------------------

    def connected(self, session_uuid: str, *, resend_unanswered: bool = False) -> Resume[O]:
        """A connection was authenticated into ``session_uuid``: what follows for the tasks.

        On the first connection (no session before) every task is simply unsent.
        """
        old, self.session_uuid = self.session_uuid, session_uuid
        resumed = old is not None and session_uuid == old
        expired: list[Entry[O]] = []
        if old is not None and not resumed:
            expired = [e for e in self._tasks.values() if e.session is not None]
            for entry in expired:
                del self._tasks[entry.task_uuid]
        to_send = []
        for entry in self._tasks.values():
            if entry.session is None or (resend_unanswered and resumed and not entry.answered):
                entry.session = session_uuid
                entry.attempt += 1
                to_send.append(entry)
        return Resume(resumed, expired, to_send)

    def window_passed(self) -> list[Entry[O]]:
        """The resume window passed while disconnected: the sent tasks are lost."""
        lost = [e for e in self._tasks.values() if e.session is not None]
        for entry in lost:
            del self._tasks[entry.task_uuid]
        return lost

    def fail_all(self) -> list[Entry[O]]:
        """Forget every task (the client closed or failed for good); return them."""
        entries = list(self._tasks.values())
        self._tasks.clear()
        return entries


def _invalid(error: ProtocolError, task_uuid: str) -> ProtocolError:
    exc = ProtocolError(f"task {task_uuid}: the server sent a result that cannot be read: {error}")
    exc.__cause__ = error
    return exc
