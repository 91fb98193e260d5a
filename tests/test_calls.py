"""Call handles: how a call ends, who waits, and when its usage is counted.

Pure logic with real threads (no sockets): the reader's part is played by a thread
that pushes items or fails the call.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import pytest

from diffusionmaster.calls import Call
from diffusionmaster.usage import Usage, UsageMeter

from .conftest import seconds


class GatedMeter(UsageMeter):
    """A meter whose ``add`` waits for ``go``: the call is caught while counting."""

    def __init__(self) -> None:
        super().__init__()
        self.entered = threading.Event()
        self.go = threading.Event()

    def add(self, usage: Usage) -> None:
        self.entered.set()
        assert self.go.wait(seconds(10))
        super().add(usage)


def _call(meter: UsageMeter, expected: int = 1) -> Call[list[Any]]:
    return Call(
        "task-1", "enhance_prompt", expected,
        item=str.upper, adapt=list, dispatch=lambda fn: fn(), deadline=None, meters=(meter,),
    )  # fmt: skip


def _in_thread(fn: Callable[[], object]) -> threading.Thread:
    thread = threading.Thread(target=fn, name="test-calls", daemon=True)
    thread.start()
    return thread


@pytest.mark.parametrize("ending", ["result", "error"])
def test_a_waiter_returns_only_once_the_usage_is_counted(ending: str) -> None:
    """Neither wait() nor outcome() returns while the call's usage is being counted."""
    meter = GatedMeter()
    call = _call(meter)
    if ending == "result":
        ender = _in_thread(lambda: call.push(("a text",), complete=True))
    else:
        ender = _in_thread(lambda: call.fail(RuntimeError("lost")))
    assert meter.entered.wait(seconds(5))
    assert call.done()  # its outcome is decided: nobody else may end it now
    assert not call.fail(RuntimeError("too late"))
    assert not call.wait(seconds(0.05))  # but it is still being counted
    results: list[object] = []

    def outcome() -> None:
        try:
            results.append(call.outcome())
        except RuntimeError as exc:
            results.append(exc)

    reader = _in_thread(outcome)
    reader.join(seconds(0.05))
    assert reader.is_alive() and not results  # outcome() waits for the count too
    meter.go.set()
    ender.join(seconds(5))
    reader.join(seconds(5))
    assert call.wait(0)
    if ending == "result":
        assert results == [["A TEXT"]]
        assert meter.total == Usage(tasks=1)
    else:
        assert isinstance(results[0], RuntimeError) and str(results[0]) == "lost"
        assert meter.total == Usage(failed=1)


def test_every_waiter_wakes_when_the_call_ends() -> None:
    """Several threads waiting on one call all return when it completes."""
    meter = UsageMeter()
    call = _call(meter)
    woke: list[bool] = []
    lock = threading.Lock()

    def wait() -> None:
        done = call.wait(seconds(10))
        with lock:
            woke.append(done)

    waiters = [_in_thread(wait) for _ in range(5)]
    call.push(("x",), complete=True)
    for waiter in waiters:
        waiter.join(seconds(10))
    assert woke == [True] * 5
    assert meter.total == Usage(tasks=1)


def test_wait_times_out_on_a_call_that_does_not_end() -> None:
    """wait(timeout) returns False when nothing ends the call in time."""
    call = _call(UsageMeter())
    assert not call.wait(seconds(0.05))
    assert not call.done()


def test_a_call_ends_once() -> None:
    """The first of a result and an error wins; the usage is counted once."""
    meter = UsageMeter()
    call = _call(meter)
    assert call.fail(RuntimeError("first"))
    assert not call.fail(RuntimeError("second"))
    call.push(("late",), complete=True)
    with pytest.raises(RuntimeError, match="first"):
        call.outcome()
    assert meter.total == Usage(failed=1)


def test_a_stream_ends_after_the_usage_is_counted() -> None:
    """stream() yields each item as it arrives and ends once the call is counted."""
    meter = GatedMeter()
    call = _call(meter, expected=2)
    items = call.stream(lambda: seconds(10))
    call.push(("one",), complete=False)
    assert next(items) == "ONE"
    ender = _in_thread(lambda: call.push(("two",), complete=True))
    assert meter.entered.wait(seconds(5))
    assert next(items) == "TWO"
    rest: list[Any] = []
    finisher = _in_thread(lambda: rest.extend(items))
    finisher.join(seconds(0.05))
    assert finisher.is_alive()  # the end of the stream waits for the count
    meter.go.set()
    ender.join(seconds(5))
    finisher.join(seconds(5))
    assert rest == [] and not finisher.is_alive()
    assert meter.total == Usage(tasks=1)
