"""A local DiffusionMaster server for testing code that uses the API.

:class:`Emulator` speaks the whole legacy WebSocket protocol (protocol.md),
serves real images over HTTP, validates every frame it receives, and injects
faults on demand (dropped connections, restarts, expired sessions, frozen
server, delayed, duplicated or withheld frames, revoked keys, failing tasks)::

    from diffusionmaster.testing import Emulator

    with Emulator(api_keys=["test-key"]) as emu:
        ...  # point a client at emu.url

Requires the ``emulator`` extra (``websockets`` and ``Pillow``).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from diffusionmaster.testing.emulator import Emulator, SessionInfo
    from diffusionmaster.testing.messages import ErrorId
    from diffusionmaster.testing.serve import serve_forever

__all__ = ["Emulator", "ErrorId", "SessionInfo", "serve_forever"]

# Imported on first use, so that this package (and the pytest plugin inside it, loaded
# by pytest whenever diffusionmaster is installed) imports without the emulator extra.
_LAZY = {
    "Emulator": "diffusionmaster.testing.emulator",
    "SessionInfo": "diffusionmaster.testing.emulator",
    "ErrorId": "diffusionmaster.testing.messages",
    "serve_forever": "diffusionmaster.testing.serve",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    try:
        value = getattr(importlib.import_module(module), name)
    except ImportError as exc:
        missing = _missing_module(exc)
        raise ImportError(
            f"diffusionmaster.testing.{name} needs the emulator extra (the module {missing} "
            'is missing): python -m pip install "diffusionmaster[emulator]"',
            name=missing,
        ) from exc
    globals()[name] = value
    return value


def _missing_module(exc: ImportError) -> str:
    """The top-level name of the module whose import failed (``websockets``, ``PIL``).

    ``exc.name`` may be a submodule (``websockets.asyncio``) or, for an ImportError
    raised by hand, None; the message then names what is known.
    """
    name = exc.name or getattr(exc.__cause__, "name", None)
    return name.partition(".")[0] if name else "unknown"


def __dir__() -> list[str]:
    return sorted(__all__)
