"""Usage accounting: tasks, images and cost, exact (``Decimal``) and thread-safe."""

from __future__ import annotations

import threading
from collections.abc import Iterable
from decimal import Decimal
from typing import Any

import attrs

from . import protocol

__all__ = ["Usage", "UsageMeter"]


@attrs.frozen
class Usage:
    """What a client (or a batch) has used so far.

    Attributes:
        tasks: tasks that completed with their results.
        failed: tasks that ended with an error (timeouts and lost sessions included).
        images: images received (generation, upscale, background removal, ControlNet
            preprocessing).
        cost: the sum of the ``cost`` the server reported for each image, exact: each
            value is taken as the decimal number the server wrote, not a float sum.
    """

    tasks: int = 0
    failed: int = 0
    images: int = 0
    cost: Decimal = Decimal(0)

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            self.tasks + other.tasks,
            self.failed + other.failed,
            self.images + other.images,
            self.cost + other.cost,
        )


_ZERO = Decimal(0)


def of_items(items: Iterable[Any]) -> Usage:
    """The usage of one completed task, from its raw protocol items."""
    images = 0
    cost = _ZERO
    for item in items:
        if isinstance(item, (protocol.ImageItem, protocol.PreprocessResult)):
            images += 1
        value = getattr(item, "cost", None)
        if value is not None:
            # repr() is the shortest text that reads back as the same float: the
            # number the server wrote, so 0.1 + 0.2 sums to exactly 0.3 here.
            cost += Decimal(repr(value))
    return Usage(tasks=1, images=images, cost=cost)


FAILED = Usage(failed=1)


class UsageMeter:
    """A running :class:`Usage` total. Thread-safe."""

    __slots__ = ("_cost", "_failed", "_images", "_lock", "_tasks")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        # Counters, not a Usage: adding builds no object (it runs as every call ends).
        self._tasks = self._failed = self._images = 0
        self._cost = _ZERO

    def add(self, usage: Usage) -> None:
        """Add ``usage`` to the total."""
        with self._lock:
            self._tasks += usage.tasks
            self._failed += usage.failed
            self._images += usage.images
            if usage.cost:
                self._cost += usage.cost

    @property
    def total(self) -> Usage:
        """The total so far."""
        with self._lock:
            return Usage(self._tasks, self._failed, self._images, self._cost)
