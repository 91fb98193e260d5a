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

    __slots__ = ("_lock", "_total")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._total = Usage()

    def add(self, usage: Usage) -> None:
        """Add ``usage`` to the total."""
        with self._lock:
            self._total = self._total + usage

    @property
    def total(self) -> Usage:
        """The total so far."""
        return self._total
