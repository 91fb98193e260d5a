"""Argument checks: pure functions that raise InvalidArgumentError naming the parameter
and what is allowed. Called before anything is sent."""

from __future__ import annotations

import enum
import math
import re
import threading
import urllib.parse
from collections.abc import Callable, Collection, Iterable
from typing import Any, TypeVar

import attrs

from . import tables
from .errors import InvalidArgumentError
from .models import ControlNet, Lora

E = TypeVar("E", bound=enum.IntEnum)
T = TypeVar("T")


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def integer(name: str, value: object, low: int, high: int | None = None) -> int:
    """An int in [low, high] (high None: unbounded)."""
    if _is_int(value):
        assert isinstance(value, int)
        if low <= value and (high is None or value <= high):
            return int(value)
        shown = f"{value}"
    else:
        shown = repr(value)
    bounds = f">= {low}" if high is None else f"from {low} to {high}"
    raise InvalidArgumentError(name, f"must be an integer {bounds}, got {shown}")


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
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidArgumentError(
            name, f"is not valid Unicode text (a lone surrogate at index {exc.start})"
        ) from None
    return value


def duration(name: str, value: object) -> float | None:
    """Seconds: a real number >= 0, or None (or ``inf``) for no limit.

    A finite value too large for the standard library's waits (over
    ``threading.TIMEOUT_MAX``) is refused, as are ``nan``, booleans and strings.
    """
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidArgumentError(name, f"must be seconds >= 0 or None, got {value!r}")
    if math.isnan(value) or value < 0:
        raise InvalidArgumentError(name, f"must be seconds >= 0 or None, got {value!r}")
    if math.isinf(value):
        return None
    if value > threading.TIMEOUT_MAX:
        raise InvalidArgumentError(
            name, f"must be at most {threading.TIMEOUT_MAX:g} s; pass None for no limit"
        )
    return float(value)


def _listing(values: Iterable[Any]) -> str:
    return ", ".join(str(v) for v in values)


def _member(value: str, table: type[E]) -> E | None:
    """The member of ``table`` named ``value`` (any case, ``-`` for ``_``), or None."""
    return table.__members__.get(value.strip().upper().replace("-", "_"))


def table_id(name: str, value: object, table: type[E]) -> int:
    """An id of an IntEnum table: the member, its int value, or its name in any case
    (``"DPMPP_2M_KARRAS"``, ``"dpmpp-2m-karras"``)."""
    if _is_int(value):
        assert isinstance(value, int)
        try:
            return int(table(value))
        except ValueError:
            pass
    elif isinstance(value, str) and (member := _member(value, table)) is not None:
        return int(member)
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


#: An AIR model id: ``<source>:<model>@<version>``, e.g. ``civitai:4201@130072``.
_AIR = re.compile(r"[A-Za-z][A-Za-z0-9_-]*:[0-9]+@[0-9]+")


def air(name: str, value: object) -> str:
    """An AIR model id such as ``civitai:4201@130072``."""
    if not isinstance(value, str) or not _AIR.fullmatch(value):
        raise InvalidArgumentError(
            name, f"must be an AIR model id like 'civitai:4201@130072', got {value!r}"
        )
    return value


def model(name: str, value: object) -> int | str:
    """A model of the table (§8.3): the member, its id or its name (``"SDXL_V1_0"``, any
    case), or an AIR string such as ``civitai:4201@130072``."""
    if isinstance(value, str):
        if _AIR.fullmatch(value):
            return value
        member = _member(value, tables.Model)
        if member is not None:
            return int(member)
        names = _listing(m.name for m in tables.Model)
        raise InvalidArgumentError(
            name,
            f"a model string must look like 'civitai:4201@130072' or name a model of "
            f"the table ({names}), got {value!r}",
        )
    return table_id(name, value, tables.Model)


#: ``WIDTHxHEIGHT``, as the size table's names and the command line spell a size.
_DIMENSIONS = re.compile(r"\s*([0-9]+)\s*[xX]\s*([0-9]+)\s*")


def size(name: str, value: object) -> int:
    """A ``sizeId``: a :class:`~diffusionmaster.tables.Size` (or its name, such as
    ``"W512_H768"``), an id, ``(width, height)`` or ``"WIDTHxHEIGHT"`` (``"512x768"``)."""
    dimensions: tuple[object, ...] | None = None
    if isinstance(value, (tuple, list)) and len(value) == 2:
        dimensions = tuple(value)
    elif isinstance(value, str):
        match = _DIMENSIONS.fullmatch(value)
        if match:
            dimensions = (int(match[1]), int(match[2]))
        elif (member := _member(value, tables.Size)) is not None:
            return int(member)
    elif _is_int(value) and value in tables.SIZES:
        return int(value)  # type: ignore[arg-type,unused-ignore]
    if dimensions is not None and all(_is_int(v) for v in dimensions):
        for size_id, dims in tables.SIZES.items():
            if dims == dimensions:
                return size_id
    allowed = _listing(f"{w}x{h}" for w, h in tables.SIZES.values())
    raise InvalidArgumentError(
        name, f"unsupported size {value!r}; supported (width, height): {allowed}"
    )


def url(name: str, value: object) -> str:
    """A WebSocket URL: ``ws://`` or ``wss://``, a host, and a valid port if any."""
    problem = None
    if not isinstance(value, str):
        problem = f"must be a ws:// or wss:// URL, got {value!r}"
    else:
        try:
            parts = urllib.parse.urlsplit(value)
            parts.port  # noqa: B018 - parsing the port raises ValueError when it is invalid
        except ValueError as exc:
            problem = f"is not a valid URL ({exc}): {value!r}"
        else:
            if parts.scheme not in ("ws", "wss"):
                problem = f"must start with ws:// or wss://, got {value!r}"
            elif not parts.hostname:
                problem = f"has no host name: {value!r}"
    if problem is not None:
        raise InvalidArgumentError(name, problem)
    assert isinstance(value, str)
    return value


def optional(check: Callable[..., T], name: str, value: object, *args: Any) -> T | None:
    """``check(name, value, *args)``, or None when ``value`` is None."""
    return None if value is None else check(name, value, *args)


def language(name: str, value: object) -> int:
    """A ``promptLanguageId`` from 1 to 298."""
    return integer(name, value, tables.LANGUAGE_IDS.start, tables.LANGUAGE_IDS.stop - 1)


#: The server's step count when ``steps`` is absent (protocol §3: "docs default 20");
#: it bounds the ControlNet steps of such a task.
DEFAULT_STEPS = 20


def lora(name: str, item: object) -> tuple[str, float]:
    """A :class:`~diffusionmaster.Lora`: return its (AIR model id, weight 0 to 1)."""
    if not isinstance(item, Lora):
        raise InvalidArgumentError(name, f"must be a Lora(model, weight), got {item!r}")
    return air(f"{name}.model", item.model), number(f"{name}.weight", item.weight, 0, 1)


def _ordered(
    name: str, first: str, last: str, low: float | None, high: float | None, word: str = "after"
) -> None:
    if low is not None and high is not None and low > high:
        raise InvalidArgumentError(f"{name}.{first}", f"{low} is {word} {last} {high}")


def controlnet_preprocessor(name: str, value: object, *, sdxl: bool) -> str:
    """A ControlNet ``preprocessor`` name (§8.6), or a preprocess type (§5) mapped to one.

    The guide returned by ``preprocess_controlnet(image, "depth")`` goes with
    ``ControlNet("depth", guide)``: a preprocess type stands for its name in
    :data:`~diffusionmaster.tables.CONTROLNET_PREPROCESSOR_OF` (``depth_midas``).
    """
    if isinstance(value, enum.Enum):
        value = value.value
    allowed = tables.CONTROLNET_PREPROCESSORS_SDXL if sdxl else tables.CONTROLNET_PREPROCESSORS
    if isinstance(value, str):
        mapped = value if value in tables.CONTROLNET_PREPROCESSORS else (
            tables.CONTROLNET_PREPROCESSOR_OF.get(value)
        )  # fmt: skip
        if mapped in allowed:
            return mapped
        if sdxl and mapped is not None:
            shown = repr(value) if mapped == value else f"{value!r} ({mapped})"
            raise InvalidArgumentError(
                name, f"{shown} is not available for SDXL models; SDXL takes "
                f"{_listing(sorted(allowed))}",
            )  # fmt: skip
    mapping = _listing(f"{k} ({v})" for k, v in sorted(tables.CONTROLNET_PREPROCESSOR_OF.items()))
    raise InvalidArgumentError(
        name, f"must be a ControlNet preprocessor ({_listing(sorted(allowed))}) or a "
        f"preprocess type of preprocess_controlnet, which stands for the name in brackets "
        f"({mapping}); got {value!r}",
    )  # fmt: skip


def controlnet(name: str, item: object, *, steps: int | None, model_id: int | str) -> ControlNet:
    """A :class:`~diffusionmaster.ControlNet` whose fields fit protocol §3 and §8.6.

    Args:
        name: the parameter's name, e.g. ``"controlnet[0]"``.
        item: the value given.
        steps: the task's ``steps`` (None: the server default, 20), which bounds
            ``start_step`` and ``end_step``.
        model_id: the task's model; SDXL takes fewer preprocessors.

    Returns:
        A copy of ``item`` holding the parsed values (its guide image is not read here).
    """
    if not isinstance(item, ControlNet):
        raise InvalidArgumentError(
            name, f"must be a ControlNet(preprocessor, guide_image), got {item!r}"
        )
    preprocessor = controlnet_preprocessor(
        f"{name}.preprocessor", item.preprocessor, sdxl=model_id == tables.Model.SDXL_V1_0
    )
    if item.guide_image is None:
        raise InvalidArgumentError(
            f"{name}.guide_image", "is required: any image input, or an http(s) URL"
        )
    weight = number(f"{name}.weight", item.weight, 0, 1)
    last_step = DEFAULT_STEPS if steps is None else steps
    start, end = (
        optional(integer, f"{name}.{field}", getattr(item, field), 0, last_step)
        for field in ("start_step", "end_step")
    )
    _ordered(name, "start_step", "end_step", start, end)
    start_pct, end_pct = (
        optional(number, f"{name}.{field}", getattr(item, field), 0, 1)
        for field in ("start_percentage", "end_percentage")
    )
    _ordered(name, "start_percentage", "end_percentage", start_pct, end_pct)
    if (start is not None or end is not None) and (start_pct is not None or end_pct is not None):
        raise InvalidArgumentError(
            name, "give start_step/end_step or start_percentage/end_percentage, not both"
        )
    mode = optional(
        choice, f"{name}.control_mode", item.control_mode, [m.value for m in tables.ControlMode]
    )
    low, high = (
        optional(integer, f"{name}.{field}", getattr(item, field), 0, 255)
        for field in ("low_threshold_canny", "high_threshold_canny")
    )
    if (low is not None or high is not None) and preprocessor != "canny":
        raise InvalidArgumentError(
            f"{name}.low_threshold_canny" if low is not None else f"{name}.high_threshold_canny",
            f"only valid with preprocessor 'canny', not {preprocessor!r}",
        )
    _ordered(name, "low_threshold_canny", "high_threshold_canny", low, high, "above")
    # The parsed values (plain strings for enums, floats for weights): what the request
    # is built from, with no second normalisation.
    return attrs.evolve(
        item, preprocessor=preprocessor, weight=weight, start_step=start, end_step=end,
        start_percentage=start_pct, end_percentage=end_pct, control_mode=mode,
        low_threshold_canny=low, high_threshold_canny=high,
    )  # fmt: skip
