"""Argument checks: pure functions that raise InvalidArgumentError naming the parameter
and what is allowed. Called before anything is sent."""

from __future__ import annotations

import enum
import math
from collections.abc import Collection, Iterable
from typing import Any, TypeVar

from . import tables
from .errors import InvalidArgumentError

E = TypeVar("E", bound=enum.IntEnum)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def integer(name: str, value: object, low: int, high: int | None = None) -> int:
    """An int in [low, high] (high None: unbounded)."""
    bounds = f">= {low}" if high is None else f"from {low} to {high}"
    if not _is_int(value):
        raise InvalidArgumentError(name, f"must be an integer {bounds}, got {value!r}")
    assert isinstance(value, int)
    if value < low or (high is not None and value > high):
        raise InvalidArgumentError(name, f"must be an integer {bounds}, got {value}")
    return int(value)


def number(name: str, value: object, low: float, high: float) -> float:
    """A finite int or float in [low, high]."""
    if not (_is_int(value) or isinstance(value, float)):
        raise InvalidArgumentError(
            name, f"must be a number from {low:g} to {high:g}, got {value!r}"
        )
    assert isinstance(value, (int, float))
    if not math.isfinite(value) or not low <= value <= high:
        raise InvalidArgumentError(name, f"must be a number from {low:g} to {high:g}, got {value}")
    return float(value)


def boolean(name: str, value: object) -> bool:
    """A bool (not a truthy value)."""
    if not isinstance(value, bool):
        raise InvalidArgumentError(name, f"must be True or False, got {value!r}")
    return value


def text(name: str, value: object, *, max_length: int | None = None) -> str:
    """A non-blank string."""
    if not isinstance(value, str) or not value.strip():
        raise InvalidArgumentError(name, f"must be a non-empty string, got {value!r}")
    if max_length is not None and len(value) > max_length:
        raise InvalidArgumentError(name, f"must be at most {max_length} characters")
    return value


def _listing(values: Iterable[Any]) -> str:
    return ", ".join(str(v) for v in values)


def table_id(name: str, value: object, table: type[E]) -> int:
    """An id of an IntEnum table (the enum member or its int value)."""
    if _is_int(value):
        assert isinstance(value, int)
        try:
            return int(table(value))
        except ValueError:
            pass
    allowed = _listing(f"{m.value} ({m.name})" for m in table)
    raise InvalidArgumentError(name, f"must be one of {allowed}; got {value!r}")


def choice(name: str, value: object, allowed: Collection[str]) -> str:
    """A string from a fixed set (str enums accepted)."""
    if isinstance(value, enum.Enum):
        value = value.value
    if not isinstance(value, str) or value not in allowed:
        raise InvalidArgumentError(
            name, f"must be one of {_listing(sorted(allowed))}; got {value!r}"
        )
    return value


def model(name: str, value: object) -> int | str:
    """A model id of the table (§8.3) or an AIR string such as ``civitai:4201@130072``."""
    if isinstance(value, str):
        source, sep, rest = value.partition(":")
        if sep and source and rest:
            return value
        raise InvalidArgumentError(
            name, f"a model string must look like 'civitai:4201@130072', got {value!r}"
        )
    return table_id(name, value, tables.Model)


def size(name: str, value: object) -> int:
    """A ``sizeId``: a :class:`~diffusionmaster.tables.Size`, an id, or ``(width, height)``."""
    if isinstance(value, tuple) and len(value) == 2:
        for size_id, dims in tables.SIZES.items():
            if dims == value:
                return size_id
    elif _is_int(value) and value in tables.SIZES:
        return int(value)  # type: ignore[arg-type,unused-ignore]
    allowed = _listing(f"{w}x{h}" for w, h in tables.SIZES.values())
    raise InvalidArgumentError(
        name, f"unsupported size {value!r}; supported (width, height): {allowed}"
    )


def language(name: str, value: object) -> int:
    """A ``promptLanguageId`` from 1 to 298."""
    return integer(name, value, tables.LANGUAGE_IDS.start, tables.LANGUAGE_IDS.stop - 1)


def uuid_text(name: str, value: object) -> str:
    """A UUID string (the server's ids)."""
    import uuid as _uuid

    if isinstance(value, str):
        try:
            _uuid.UUID(value)
            return value
        except ValueError:
            pass
    raise InvalidArgumentError(name, f"must be an image UUID string, got {value!r}")
