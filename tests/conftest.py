"""Shared fixtures: a real emulator on 127.0.0.1 (port 0) and a real Client on it.

Time in tests is a scalable unit: set DIFFUSIONMASTER_TEST_TIME_UNIT=2 on a slow machine
to double every timeout the tests use (never a sleep: tests wait on events).
"""

from __future__ import annotations

import fcntl
import os
import pty
import select
import struct
import subprocess
import sys
import termios
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

import diffusionmaster

if TYPE_CHECKING:
    from diffusionmaster.testing import Emulator

UNIT = float(os.environ.get("DIFFUSIONMASTER_TEST_TIME_UNIT", "1"))
API_KEY = "test-key"
DATA = Path(__file__).resolve().parent / "data"
#: The steering repo's copy of the spec, beside the checkout (absent in a user's clone).
SHARED = Path(__file__).resolve().parent.parent.parent / "shared"


def seconds(n: float) -> float:
    """``n`` test time units, in seconds."""
    return n * UNIT


def _library_threads() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if t.name.startswith("diffusionmaster-")}


@pytest.fixture(autouse=True)
def no_leaked_threads() -> Iterator[None]:
    """Fail a test that leaves a ``diffusionmaster-*`` thread alive after its teardown."""
    before = _library_threads()
    yield
    leaked = _library_threads() - before
    for thread in leaked:
        thread.join(seconds(3))
    alive = sorted(t.name for t in leaked if t.is_alive())
    assert not alive, f"threads outlived their client: {alive}"


@pytest.fixture
def emulator() -> Iterator[Emulator]:
    """A fresh emulator with a short resume window and no latency."""
    from diffusionmaster.testing import Emulator

    with Emulator(api_keys=[API_KEY], resume_window=seconds(5)) as emu:
        yield emu


def make_client(emu: Emulator, **kwargs: object) -> diffusionmaster.Client:
    """A Client on ``emu`` with test-sized timeouts (overridable)."""
    options: dict[str, object] = {
        "url": emu.url,
        "timeout": seconds(10),
        "connect_timeout": seconds(5),
        "reconnect": diffusionmaster.Reconnect(
            resume_window=seconds(5), min_delay=0.01, max_delay=0.1
        ),
    }
    options.update(kwargs)
    return diffusionmaster.Client(API_KEY, **options)  # type: ignore[arg-type]


@pytest.fixture
def client(emulator: Emulator) -> Iterator[diffusionmaster.Client]:
    """A connected Client on the emulator, closed after the test."""
    with make_client(emulator) as c:
        yield c


def run_on_a_terminal(*argv: str, cwd: Path | None = None, columns: int = 80) -> tuple[int, str]:
    """Run ``python -m diffusionmaster ARGV`` with stderr on a pseudo-terminal of
    ``columns``; return (exit code, what it wrote to stderr). Bounded: a program that
    stays silent for 60 time units is killed."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, columns, 0, 0))
    chunks: list[bytes] = []
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "diffusionmaster", *argv],
            cwd=cwd,
            stdout=subprocess.DEVNULL,
            stderr=slave,
        )
        os.close(slave)
        while True:
            if not select.select([master], [], [], seconds(60))[0]:
                proc.kill()
                break
            try:
                chunk = os.read(master, 4096)
            except OSError:  # EIO: the program closed its end
                break
            if not chunk:
                break
            chunks.append(chunk)
        code = proc.wait(timeout=seconds(60))
    finally:
        os.close(master)
    return code, b"".join(chunks).decode("utf-8", "replace")
