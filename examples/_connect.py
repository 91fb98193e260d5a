"""Where the examples connect.

With ``DIFFUSIONMASTER_API_KEY`` set, to the service (or to ``DIFFUSIONMASTER_URL``
when that is set too, e.g. an emulator started with ``diffusionmaster emulator``);
without a key, to an emulator embedded in the script (needs the ``emulator``
extra), so every example runs offline.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any

from diffusionmaster import Client


@contextlib.contextmanager
def connect(**options: Any) -> Iterator[Client]:
    """A connected client, closed on exit; ``options`` go to :class:`Client`."""
    key = os.environ.get("DIFFUSIONMASTER_API_KEY")
    if key:
        with Client(key, url=os.environ.get("DIFFUSIONMASTER_URL"), **options) as client:
            yield client
        return
    from diffusionmaster.testing import Emulator

    with (
        Emulator(api_keys=["example-key"]) as emulator,
        Client("example-key", url=emulator.url, **options) as client,
    ):
        yield client
