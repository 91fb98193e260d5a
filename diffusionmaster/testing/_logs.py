"""A logger for the websockets library that never shows an API key.

websockets logs every frame at DEBUG, including ``newConnection`` with its
``apiKey``. The adapter masks the key's value in the formatted arguments before
the record is made; nothing is configured on any logger.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

_API_KEY = re.compile(r'("apiKey"\s*:\s*")[^"]*')


def redact(text: str) -> str:
    """Replace the value of every ``"apiKey"`` in ``text`` with ``***``."""
    return _API_KEY.sub(r"\1***", text)


if TYPE_CHECKING:
    _Adapter = logging.LoggerAdapter[logging.Logger]
else:  # LoggerAdapter takes a type argument at run time only from Python 3.11
    _Adapter = logging.LoggerAdapter


class RedactingAdapter(_Adapter):
    """Formats each message, then masks its ``"apiKey"`` values."""

    def log(self, level: int, msg: object, *args: object, **kwargs: Any) -> None:
        if self.isEnabledFor(level):
            try:
                text = str(msg) % args if args else str(msg)
            except (TypeError, ValueError):
                text = " ".join(map(str, (msg, *args)))
            self.logger.log(level, "%s", redact(text), **kwargs)

    def process(self, msg: Any, kwargs: Any) -> tuple[Any, Any]:
        return msg, kwargs


def websockets_logger() -> RedactingAdapter:
    """The logger given to the emulator's websockets server."""
    extra: Mapping[str, object] = {}
    return RedactingAdapter(logging.getLogger("diffusionmaster.testing.websockets"), extra)
