"""Case 6, against the official legacy SDK (``runware==0.1.5``), sequential text2img.

The SDK runs in its own virtual environment (``tools.legacy_sdk``), in a subprocess
driven one call at a time (bench/legacy_driver.py), against the same emulator as
our client; calls of both sides alternate. The SDK's time is measured inside its
process around ``requestImages``. Target: ours at least 20x faster (median).

The SDK detects completion by polling every 100 ms, so its latency is about 100 ms
whatever the server does. If it cannot be installed the case says so and passes
on; with ``--quick`` it is never installed (only an existing venv is used).
"""

from __future__ import annotations

import json
import selectors
import subprocess
import time
from pathlib import Path
from typing import Any

from bench._common import API_KEY, ROOT, CaseResult, EmulatorProcess, Row, make_client, summary

NAME = "legacy"
TITLE = "Against the official legacy SDK runware==0.1.5 (text2img, 1 image, sequential)"
DRIVER = Path(__file__).resolve().parent / "legacy_driver.py"
PROMPT = "a lighthouse at dawn"
TARGET = 20.0


class _Driver:
    """The SDK driver process; every read is bounded, and an overrun kills it."""

    def __init__(self, python: Path, url: str, limit: float) -> None:
        self._process = subprocess.Popen(
            [str(python), str(DRIVER), url, API_KEY, str(limit)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            bufsize=1,
            cwd=ROOT,
        )
        self._selector = selectors.DefaultSelector()
        assert self._process.stdout is not None
        self._selector.register(self._process.stdout, selectors.EVENT_READ)

    def read(self, timeout: float) -> dict[str, Any]:
        assert self._process.stdout is not None
        if not self._selector.select(timeout):
            raise TimeoutError(f"the SDK did not answer within {timeout} s")
        line = self._process.stdout.readline()
        if not line:
            raise RuntimeError(f"the SDK driver exited (code {self._process.poll()})")
        report: dict[str, Any] = json.loads(line)
        return report

    def call(self) -> float:
        assert self._process.stdin is not None
        self._process.stdin.write("call\n")
        self._process.stdin.flush()
        report = self.read(35)
        if not report.get("ok"):
            raise RuntimeError(f"the SDK call failed: {report}")
        elapsed: float = report["elapsed"]
        return elapsed

    def close(self) -> None:
        if self._process.poll() is None:
            try:
                assert self._process.stdin is not None
                self._process.stdin.write("quit\n")
                self._process.stdin.flush()
                self._process.wait(5)
            except (OSError, subprocess.TimeoutExpired):
                pass
        if self._process.poll() is None:
            self._process.kill()
            self._process.wait()
        for stream in (self._process.stdin, self._process.stdout):
            if stream is not None:
                stream.close()
        self._selector.close()


def _sdk_python(quick: bool) -> Path:
    """The SDK's interpreter; with ``quick`` only an existing, working venv (no install)."""
    from tools import legacy_sdk

    if not quick:
        return legacy_sdk.python()
    root = legacy_sdk.cache_dir()
    for name in ("bin/python", "Scripts/python.exe"):
        python = root / name
        if python.exists():
            check = subprocess.run(
                [str(python), "-c", "import runware"], capture_output=True, timeout=30
            )
            if check.returncode == 0:
                return python
    raise legacy_sdk.SDKUnavailable(
        f"skipped with --quick: no working SDK venv at {root} (a full run installs it)"
    )


def _sdk_versions(python: Path) -> str:
    """The versions of runware and websockets in the SDK's venv."""
    code = (
        "import importlib.metadata as m, platform; "
        "print('runware', m.version('runware'), 'websockets', m.version('websockets'), "
        "'python', platform.python_version())"
    )
    try:
        done = subprocess.run([str(python), "-c", code], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError) as exc:
        return f"unknown ({exc})"
    return done.stdout.strip() or f"unknown ({done.stderr.strip()[-200:]})"


def run(quick: bool) -> CaseResult:
    rounds = 3 if quick else 30
    result = CaseResult(NAME, TITLE)
    try:
        python = _sdk_python(quick)
    except Exception as exc:
        result.error = f"legacy SDK unavailable: {type(exc).__name__}: {str(exc)[:500]}"
        result.rows.append(Row("median", None, None, "ms", None, f">= {TARGET:g}x faster", None))
        return result
    with EmulatorProcess() as emu, make_client(emu.url) as client:
        driver = _Driver(python, emu.url, limit=60 if quick else 120)
        try:
            ready = driver.read(30)
            if not ready.get("ready"):
                raise RuntimeError(f"the SDK did not connect: {ready}")
            ours: list[float] = []
            sdk: list[float] = []
            for _ in range(2):  # warm-up
                client.text2img(PROMPT)
                driver.call()
            for index in range(rounds):
                for side in ("ours", "sdk") if index % 2 == 0 else ("sdk", "ours"):
                    if side == "ours":
                        start = time.perf_counter()
                        client.text2img(PROMPT)
                        ours.append(time.perf_counter() - start)
                    else:
                        sdk.append(driver.call())
        finally:
            driver.close()
    ours_ms = {k: v * 1e3 if k != "n" else v for k, v in summary(ours).items()}
    sdk_ms = {k: v * 1e3 if k != "n" else v for k, v in summary(sdk).items()}
    result.details = {
        "unit": "ms",
        "ours": ours_ms,
        "sdk": sdk_ms,
        "sdk_python": str(python),
        "sdk_packages": _sdk_versions(python),
    }
    speedup = sdk_ms["median"] / ours_ms["median"]
    result.rows.append(
        Row(
            "median",
            ours_ms["median"],
            sdk_ms["median"],
            "ms",
            ours_ms["median"] / sdk_ms["median"],
            f">= {TARGET:g}x faster",
            speedup >= TARGET,
            kind="speedup",
        )
    )
    result.rows.append(
        Row(
            "p99",
            ours_ms["p99"],
            sdk_ms["p99"],
            "ms",
            ours_ms["p99"] / sdk_ms["p99"],
            "-",
            None,
            kind="speedup",
        )
    )
    result.notes.append(
        f"{rounds} sequential calls per side, alternating; the SDK's time is taken inside "
        f"its process (no pipe); it polls for completion every 100 ms. Ours is "
        f"{speedup:.0f}x faster at the median."
    )
    return result
