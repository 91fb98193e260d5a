"""Fixtures of the interop suite: the official legacy SDK (``runware==0.1.5``) against our
emulator.

The SDK never runs in this process. It pins ``websockets==12.0``, prints to stdout,
calls ``exit()`` on some errors and can hot-spin its event loop, so each scenario is
one subprocess of the SDK's own interpreter (a cached venv made by
:func:`tools.legacy_sdk.python`) running ``sdk_driver.py``, killed after a hard
timeout. It talks to the emulator of ``tests/conftest.py`` (in this process, on
127.0.0.1, port 0) over loopback, and reports the SDK's return values as JSON.
"""

from __future__ import annotations

import json
import subprocess
import tempfile
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import pytest
from PIL import Image

from diffusionmaster.testing import Emulator
from tests.conftest import API_KEY, seconds
from tools import legacy_sdk

DRIVER = Path(__file__).resolve().with_name("sdk_driver.py")

Frame = dict[str, Any]


@pytest.fixture(scope="session")
def legacy_python() -> Path:
    """The interpreter of the SDK's venv, made once per session (fails when pip cannot)."""
    try:
        return legacy_sdk.python()
    except legacy_sdk.SDKUnavailable as exc:
        reason = str(exc)
    # Outside the except block, so the report is the message alone. pytest keeps a
    # session fixture's failure: the install is tried once, every interop test fails.
    pytest.fail(f"the interop tests need the official legacy SDK: {reason}", pytrace=False)


@dataclass(frozen=True)
class SDKRun:
    """What one driver run reported (see sdk_driver.py).

    Attributes:
        outcome: "done", "failed" (a step raised), "watchdog" or "stopped".
        session: the SDK's ``connectionSessionUUID`` at the end.
        results: one entry per step run: ``{"op", "ok", "value"}`` or
            ``{"op", "ok": False, "type", "error"}``.
        pongs: when the SDK read each ``{"pong": true}``, in seconds from its start.
        stderr: what the SDK printed or logged.
    """

    outcome: str
    session: str | None
    results: list[dict[str, Any]]
    pongs: list[float]
    stderr: str

    def value(self, index: int) -> Any:
        """The return value of step ``index``, which must have succeeded."""
        assert index < len(self.results), (
            f"the driver ended ({self.outcome}) before step {index}: {self.results}\n{self.stderr}"
        )
        result = self.results[index]
        assert result["ok"], f"step {index} failed: {result}\n{self.stderr}"
        return result["value"]

    @property
    def failure(self) -> tuple[str, str]:
        """``(exception type, message)`` of the step that failed last."""
        assert self.results, f"the driver ended ({self.outcome}) before any step\n{self.stderr}"
        result = self.results[-1]
        assert not result["ok"], f"no step failed: {self.results}"
        return result["type"], result["error"]


class SDKProcess:
    """One running driver; :meth:`finish` collects its report."""

    def __init__(self, process: subprocess.Popen[str], stderr: IO[str], hard_timeout: float):
        self.process = process
        self._stderr = stderr
        self.hard_timeout = hard_timeout
        self._reaped = False

    def send_line(self) -> None:
        """Release a ``wait_for_line`` step."""
        assert self.process.stdin is not None
        self.process.stdin.write("go\n")
        self.process.stdin.flush()

    def finish(self, timeout: float | None = None) -> SDKRun:
        """Wait for the report; on timeout kill the process and raise ``TimeoutExpired``."""
        try:
            stdout, _ = self.process.communicate(timeout=timeout or self.hard_timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise
        self._reaped = True
        self._stderr.seek(0)
        stderr = self._stderr.read()
        self._stderr.close()
        assert stdout.strip(), (
            f"the driver wrote no report (rc {self.process.returncode}):\n{stderr}"
        )
        report = json.loads(stdout)
        return SDKRun(
            outcome=report["outcome"],
            session=report["session"],
            results=report["results"],
            pongs=report["pongs"],
            stderr=stderr,
        )

    def kill(self) -> None:
        """Kill the process if it still runs, and reap it (idempotent)."""
        if not self._reaped:
            if self.process.poll() is None:
                self.process.kill()
            self.process.communicate()
            self._reaped = True
        self._stderr.close()


class LegacySDK:
    """Starts driver runs against one emulator URL; kills leftovers at teardown."""

    def __init__(self, python: Path, url: str) -> None:
        self.python = python
        self.url = url
        self._started: list[SDKProcess] = []

    def start(
        self, steps: list[Frame], *, key: str = API_KEY, watchdog: float | None = None
    ) -> SDKProcess:
        """Start the driver on ``steps``. Its watchdog ends it after ``watchdog`` seconds
        (default 10 units); the hard timeout of :meth:`SDKProcess.finish` is 5 units more."""
        watchdog = seconds(10) if watchdog is None else watchdog
        # A file, not a pipe: nothing reads stderr while the driver runs, and the SDK's
        # print() dumps could fill a pipe and block it. SDKProcess closes the file.
        stderr = tempfile.TemporaryFile("w+", encoding="utf-8")  # noqa: SIM115
        process = subprocess.Popen(
            [str(self.python), str(DRIVER), self.url, key, json.dumps(steps), str(watchdog)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
        )
        started = SDKProcess(process, stderr, watchdog + seconds(5))
        self._started.append(started)
        return started

    def run(self, steps: list[Frame], **options: Any) -> SDKRun:
        """Run the driver on ``steps`` to its end and return its report."""
        return self.start(steps, **options).finish()

    def close(self) -> None:
        for started in self._started:
            started.kill()


@pytest.fixture
def sdk(legacy_python: Path, emulator: Emulator) -> Iterator[LegacySDK]:
    """Driver runs of the official SDK against this test's emulator."""
    runner = LegacySDK(legacy_python, emulator.url)
    try:
        yield runner
    finally:
        runner.close()


@pytest.fixture
def png(tmp_path: Path) -> Path:
    """A 64x48 PNG file (the SDK uploads only file paths)."""
    path = tmp_path / "teal.png"
    Image.new("RGB", (64, 48), "teal").save(path)
    return path


def fetch(url: str) -> tuple[str, Image.Image]:
    """GET an image URL of the emulator: its Content-Type and decoded image."""
    with urllib.request.urlopen(url, timeout=seconds(5)) as response:
        content_type = response.headers["Content-Type"]
        image = Image.open(response)
        image.load()
    return content_type, image


def keys(frames: list[Frame]) -> list[str]:
    """The message key of each frame."""
    return [next(iter(frame)) for frame in frames]


def task_frames(frames: list[Frame], key: str) -> list[Frame]:
    """The bodies of the frames whose message key is ``key``."""
    return [frame[key] for frame in frames if key in frame]
