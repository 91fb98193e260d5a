"""Small immutable configuration objects, and the deadline helper.

All durations are seconds (``float``); ``None`` means "no limit" where allowed.
"""

from __future__ import annotations

import enum
import math
import time
from typing import Any, Final

import attrs

from .errors import InvalidArgumentError

__all__ = ["DEFAULT", "MAX_MESSAGE_SIZE", "Deadline", "DefaultType", "Heartbeat", "Reconnect"]


class DefaultType(enum.Enum):
    """Type of :data:`DEFAULT`, the "use the client's default" sentinel."""

    DEFAULT = "DEFAULT"

    def __repr__(self) -> str:
        return "DEFAULT"


#: Passed as ``timeout=`` (the default): use the client's configured timeout.
DEFAULT: Final = DefaultType.DEFAULT


#: The default ``max_message_size`` of a Client: 256 MiB. The largest result frame
#: the protocol can produce (a 1024x1024 or 1344x768 PNG is at most about 4 MiB raw,
#: 5.6 MiB as base64, and a frame may carry several images) fits many times over;
#: a message this large costs about twice its size in memory while it is read.
MAX_MESSAGE_SIZE: Final = 256 * 1024 * 1024


def message_size(value: object) -> int | None:
    """Check a ``max_message_size`` argument: an int >= 1024, or None (no cap)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1024:
        raise InvalidArgumentError(
            "max_message_size", f"must be an integer >= 1024 (bytes) or None, got {value!r}"
        )
    return value


def _number(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise InvalidArgumentError(name, f"must be a finite number, got {value!r}")
    return float(value)


def _non_negative(instance: object, attribute: attrs.Attribute[float], value: float) -> None:
    if _number(attribute.name, value) < 0:
        raise InvalidArgumentError(attribute.name, f"must be >= 0, got {value!r}")


def _positive(instance: object, attribute: attrs.Attribute[float], value: float) -> None:
    if _number(attribute.name, value) <= 0:
        raise InvalidArgumentError(attribute.name, f"must be > 0, got {value!r}")


def _fraction(instance: object, attribute: attrs.Attribute[float], value: float) -> None:
    if not 0 <= _number(attribute.name, value) <= 1:
        raise InvalidArgumentError(attribute.name, f"must be between 0 and 1, got {value!r}")


def _at_least_one(instance: object, attribute: attrs.Attribute[float], value: float) -> None:
    if _number(attribute.name, value) < 1:
        raise InvalidArgumentError(attribute.name, f"must be >= 1, got {value!r}")


def _flag(instance: object, attribute: attrs.Attribute[bool], value: bool) -> None:
    if not isinstance(value, bool):
        raise InvalidArgumentError(attribute.name, f"must be True or False, got {value!r}")


def _optional_positive(
    instance: object, attribute: attrs.Attribute[Any], value: float | None
) -> None:
    if value is not None and _number(attribute.name, value) <= 0:
        raise InvalidArgumentError(attribute.name, f"must be > 0 or None, got {value!r}")


@attrs.frozen
class Reconnect:
    """How the client recovers a dropped connection.

    The first attempt is immediate; then the delay grows from ``min_delay`` by
    ``multiplier`` up to ``max_delay``, each delay shortened by up to ``jitter``
    (a fraction) at random. Attempts to resume the session go on for
    ``resume_window`` seconds after the drop: the server keeps undelivered results
    that long (120 s), so giving up earlier would lose them and going on longer
    could not recover them. Past the window, waiting calls fail with
    :class:`~diffusionmaster.ConnectionFailedError` and the client keeps trying,
    every ``max_delay``, to open a new session for new calls.

    Attributes:
        enabled: reconnect at all (False: a drop fails waiting calls at once).
        resume_window: seconds the server keeps a session's results (protocol: 120).
        min_delay: delay before the second attempt.
        max_delay: the longest delay between attempts.
        multiplier: growth of the delay per attempt.
        jitter: fraction of each delay removed at random (0 to 1).
        resend_unanswered: after a resume, re-send (same task UUID) the tasks that had
            received nothing. Off by default: see the README, "Reconnect and resume".
    """

    enabled: bool = attrs.field(default=True, validator=_flag)
    resume_window: float = attrs.field(default=120.0, validator=_non_negative)
    min_delay: float = attrs.field(default=0.25, validator=_non_negative)
    max_delay: float = attrs.field(default=8.0, validator=_non_negative)
    multiplier: float = attrs.field(default=2.0, validator=_at_least_one)
    jitter: float = attrs.field(default=0.5, validator=_fraction)
    resend_unanswered: bool = attrs.field(default=False, validator=_flag)

    def __attrs_post_init__(self) -> None:
        if self.min_delay > self.max_delay:
            raise InvalidArgumentError(
                "min_delay", f"{self.min_delay!r} is above max_delay {self.max_delay!r}"
            )


@attrs.frozen
class Heartbeat:
    """The application-level heartbeat (``{"ping": true}``).

    When no bytes have arrived, or none were sent, for ``interval`` seconds the
    client sends a ping; if no bytes at all arrive within ``timeout`` seconds after
    it, the connection is taken as dead and the client reconnects (and resumes the
    session). Bytes, not whole frames, count: a large result still arriving keeps
    the link alive. The ping never waits behind a send in progress; a send that
    makes no progress for ``timeout`` after the ping was due (a frozen link) counts
    as dead too. With the defaults a dead or frozen link is found within about 10 s
    of its last sign of life, as the legacy official SDK did (ping every 5 s, give
    up after 10 s), and an idle connection sends a 13-byte frame every 5 s, well
    inside the server's 120 s idle close. Every second a half-open link goes
    unnoticed is a second in which the server may write results into it that nobody
    will read: see the README, "Reconnect and resume".

    Attributes:
        interval: idle seconds (in either direction) before a ping; None turns
            the heartbeat off.
        timeout: seconds to wait for a sign of life after a ping.
    """

    interval: float | None = attrs.field(default=5.0, validator=_optional_positive)
    timeout: float = attrs.field(default=5.0, validator=_positive)


class Deadline:
    """A point in time on the monotonic clock, for operations with several steps."""

    __slots__ = ("_end",)

    def __init__(self, timeout: float | None) -> None:
        self._end = None if timeout is None else time.monotonic() + timeout

    @property
    def unlimited(self) -> bool:
        """True when there is no deadline."""
        return self._end is None

    def remaining(self) -> float | None:
        """Seconds left (never negative), or None when unlimited."""
        if self._end is None:
            return None
        return max(0.0, self._end - time.monotonic())

    def expired(self) -> bool:
        """True once the deadline has passed."""
        return self._end is not None and time.monotonic() >= self._end
