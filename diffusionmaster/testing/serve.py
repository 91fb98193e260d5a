"""``serve_forever``: run an emulator in the foreground (``diffusionmaster emulator``)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from diffusionmaster.testing.emulator import Emulator

__all__ = ["serve_forever"]

logger = logging.getLogger("diffusionmaster.testing.serve")


def serve_forever(
    port: int,
    api_keys: list[str],
    host: str = "127.0.0.1",
    *,
    on_ready: Callable[[Emulator], None] | None = None,
) -> None:
    """Run an emulator until KeyboardInterrupt (for ``diffusionmaster emulator``).

    Args:
        port: the TCP port (0 picks a free one).
        api_keys: the accepted API keys.
        host: the address to listen on.
        on_ready: called once listening, e.g. to print ``emu.url``.
    """
    stop = threading.Event()
    with Emulator(api_keys, host=host, port=port) as emulator:
        if on_ready is not None:
            on_ready(emulator)
        try:
            while not stop.wait(1.0):  # a timed wait keeps Ctrl-C responsive on every platform
                pass
        except KeyboardInterrupt:
            logger.debug("emulator stopped by KeyboardInterrupt")
