"""pytest fixtures for testing code that uses diffusionmaster, against the emulator.

Registered through the ``pytest11`` entry point, so installing the package is
enough: no ``conftest.py`` line is needed. The fixtures need the ``emulator``
extra (``websockets`` and ``Pillow``), imported only when a fixture is used, so
this module loads in any pytest run.

Fixtures (all function-scoped):

``diffusionmaster_api_key``
    The key the emulator accepts (``"test-key"``); override it to use another.
``diffusionmaster_emulator``
    A started :class:`~diffusionmaster.testing.Emulator` on 127.0.0.1 (a free
    port); it is the fault injector too (``drop_connections()``,
    ``expire_sessions()``, ``fail_next_task()``, ``freeze()``...), and it records
    what it received (``received_frames()``). Closed after the test.
``diffusionmaster_client``
    A :class:`~diffusionmaster.Client` connected to that emulator, with a 30 s
    call timeout and fast reconnects. Closed after the test.

Example::

    def test_thumbnail(diffusionmaster_client, diffusionmaster_emulator):
        (image,) = diffusionmaster_client.text2img("a red fox")
        assert image.format == "jpeg"
        (frame,) = [f for f in diffusionmaster_emulator.received_frames() if "newTask" in f]
        assert frame["newTask"]["promptText"] == "a red fox"
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from diffusionmaster import Client
    from diffusionmaster.testing import Emulator

__all__ = ["diffusionmaster_api_key", "diffusionmaster_client", "diffusionmaster_emulator"]

#: The default call timeout of :func:`diffusionmaster_client`, in seconds.
CLIENT_TIMEOUT = 30.0


@pytest.fixture
def diffusionmaster_api_key() -> str:
    """The API key the emulator accepts and the client sends; override to change it."""
    return "test-key"


@pytest.fixture
def diffusionmaster_emulator(diffusionmaster_api_key: str) -> Iterator[Emulator]:
    """A started emulator on 127.0.0.1 (a free port), closed after the test.

    It is also the fault injector and the record of what the server received.
    """
    from diffusionmaster import testing

    try:
        from diffusionmaster.testing import Emulator
    except ImportError as exc:
        pytest.fail(
            "diffusionmaster_emulator needs the emulator extra (the module "
            f'{testing._missing_module(exc)} is missing): pip install "diffusionmaster[emulator]"',
            pytrace=False,
        )
    with Emulator(api_keys=[diffusionmaster_api_key]) as emulator:
        yield emulator


@pytest.fixture
def diffusionmaster_client(
    diffusionmaster_emulator: Emulator, diffusionmaster_api_key: str
) -> Iterator[Client]:
    """A client connected to :func:`diffusionmaster_emulator`, closed after the test."""
    from diffusionmaster import Client, Reconnect

    with Client(
        diffusionmaster_api_key,
        url=diffusionmaster_emulator.url,
        timeout=CLIENT_TIMEOUT,
        reconnect=Reconnect(min_delay=0.01, max_delay=0.5),
    ) as client:
        yield client
