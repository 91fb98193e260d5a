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

from diffusionmaster.testing.emulator import Emulator, SessionInfo
from diffusionmaster.testing.messages import ErrorId
from diffusionmaster.testing.serve import serve_forever

__all__ = ["Emulator", "ErrorId", "SessionInfo", "serve_forever"]
