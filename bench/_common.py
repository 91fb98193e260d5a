"""What every case shares: statistics, interleaving, the emulator process, raw sockets.

Nothing here imports the client under test except :func:`make_client`, so that
baseline code paths never share its state.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import platform
import selectors
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import websocket

ROOT = Path(__file__).resolve().parent.parent
API_KEY = "bench-key"  # the key bench._server accepts


# -- results ---------------------------------------------------------------------


@dataclass
class Row:
    """One line of the results table.

    ``ratio`` is ours / baseline (for throughput: ours / baseline requests per second);
    for the resume case it is the difference in milliseconds (``kind == "delta"``).
    """

    metric: str
    ours: float | None
    baseline: float | None
    unit: str
    ratio: float | None
    target: str
    met: bool | None
    kind: str = "ratio"


@dataclass
class CaseResult:
    """What one case reports: table rows, raw numbers, and notes for the reader."""

    name: str
    title: str
    rows: list[Row] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    error: str | None = None
    seconds: float = 0.0
    #: share (%) of the CPUs' time the hypervisor took from this machine during the
    #: case (None where /proc/stat has no steal column): above a few percent the
    #: ratios say more about the host than about the code
    steal: float | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def ratio_row(
    metric: str, ours: float, baseline: float, unit: str, limit: float, *, higher: bool = False
) -> Row:
    """A row comparing ``ours / baseline`` with ``limit`` (<= limit, or >= with ``higher``)."""
    ratio = ours / baseline if baseline else math.inf
    met = ratio >= limit if higher else ratio <= limit
    return Row(metric, ours, baseline, unit, ratio, f"{'>=' if higher else '<='} {limit:g}x", met)


# -- statistics ------------------------------------------------------------------


def percentile(samples: list[float], q: float) -> float:
    """The nearest-rank ``q`` percentile (0 < q <= 100)."""
    ordered = sorted(samples)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def summary(samples: list[float]) -> dict[str, float]:
    """n, median, p99, mean, min and max of ``samples``."""
    return {
        "n": len(samples),
        "median": statistics.median(samples),
        "p99": percentile(samples, 99),
        "mean": statistics.fmean(samples),
        "min": min(samples),
        "max": max(samples),
    }


def interleave(
    sides: dict[str, Callable[[], float]], rounds: int, warmup: int = 0
) -> dict[str, list[float]]:
    """Run each side once per round, cycling through every order (A B, B A, ...).

    Each callable measures itself and returns seconds (or any number): machine
    noise then hits every side alike, and no side keeps a place in the round.
    With three or more sides every permutation is used, not only the reversal:
    A B C / C B A would keep B in the middle, which measured about 3% faster
    than the ends for two identical clients.
    """
    names = list(sides)
    for _ in range(warmup):
        for name in names:
            sides[name]()
    orders = list(itertools.permutations(names))
    samples: dict[str, list[float]] = {name: [] for name in names}
    for index in range(rounds):
        for name in orders[index % len(orders)]:
            samples[name].append(sides[name]())
    return samples


# -- the emulator process -----------------------------------------------------------


class EmulatorProcess:
    """``python -m bench._server``: an emulator in another process, with a control line."""

    def __init__(self, *, image_bytes: int = 0, timeout: float = 30.0) -> None:
        self._process = subprocess.Popen(
            [sys.executable, "-m", "bench._server", "--image-bytes", str(image_bytes)],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            bufsize=1,
        )
        self._selector = selectors.DefaultSelector()
        assert self._process.stdout is not None
        self._selector.register(self._process.stdout, selectors.EVENT_READ)
        try:
            line = self._readline(timeout)
        except BaseException:
            self.close()
            raise
        if not line.startswith("ready "):
            self.close()
            raise RuntimeError(f"bench._server did not start: {line!r}")
        self.url = line.split(None, 1)[1]

    @property
    def pid(self) -> int:
        return self._process.pid

    def _readline(self, timeout: float) -> str:
        assert self._process.stdout is not None
        if not self._selector.select(timeout):
            raise TimeoutError(f"bench._server did not answer within {timeout} s")
        line = self._process.stdout.readline()
        if not line:
            raise RuntimeError(f"bench._server exited (code {self._process.poll()})")
        return line.strip()

    def command(self, text: str, timeout: float = 30.0) -> str:
        """Send one command line; return the value after ``ok`` (raise on ``error``)."""
        assert self._process.stdin is not None
        self._process.stdin.write(text + "\n")
        self._process.stdin.flush()
        reply = self._readline(timeout)
        if not reply.startswith("ok"):
            raise RuntimeError(f"bench._server: {text!r} -> {reply!r}")
        return reply[2:].strip()

    def close(self) -> None:
        process = self._process
        if process.poll() is None:
            try:
                assert process.stdin is not None
                process.stdin.write("quit\n")
                process.stdin.flush()
                process.wait(10)
            except (OSError, subprocess.TimeoutExpired):
                process.kill()
                process.wait()
        for stream in (process.stdin, process.stdout):
            if stream is not None:
                stream.close()
        self._selector.close()

    def __enter__(self) -> EmulatorProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# -- the two sides ------------------------------------------------------------------


def make_client(url: str, **kwargs: Any) -> Any:
    """The client under test, with the library's defaults (heartbeat on)."""
    import diffusionmaster

    return diffusionmaster.Client(API_KEY, url=url, **kwargs)


class RawConnection:
    """The baseline: websocket-client's ``WebSocket`` used as directly as it gets.

    Its defaults plus ``skip_utf8_validation=True`` (the option every fast user sets);
    authenticated with ``newConnection`` like the client.
    """

    def __init__(self, url: str) -> None:
        self.ws = websocket.WebSocket(skip_utf8_validation=True)
        self.ws.connect(url, suppress_origin=True)  # type: ignore[no-untyped-call,unused-ignore]
        self.ws.send(json.dumps({"newConnection": {"apiKey": API_KEY}}))
        reply = json.loads(self.ws.recv())
        self.session_uuid = reply["newConnectionSessionUUID"]["connectionSessionUUID"]

    def recv_json(self) -> Any:
        return json.loads(self.ws.recv())

    def close(self) -> None:
        self.ws.close()


def enhance_frame(task_uuid: str, prompt: str = "a lighthouse at dawn") -> str:
    """The ``newPromptEnhance`` frame the client sends for ``enhance_prompt(prompt)``."""
    body = {
        "taskUUID": task_uuid,
        "prompt": prompt,
        "promptMaxLength": 380,
        "promptVersions": 1,
        "promptLanguageId": 1,
    }
    return json.dumps({"newPromptEnhance": body}, separators=(",", ":"))


def raw_enhance(raw: RawConnection, prompt: str = "a lighthouse at dawn") -> str:
    """One round trip of the raw loop: send a new task, read until its answer."""
    task_uuid = str(uuid.uuid4())
    raw.ws.send(enhance_frame(task_uuid, prompt))
    while True:
        frame = raw.recv_json()
        texts = frame.get("newPromptEnhancer", {}).get("texts", ())
        if texts and texts[0]["taskUUID"] == task_uuid:
            text: str = texts[0]["text"]
            return text


def timed(fn: Callable[[], object]) -> Callable[[], float]:
    """Wrap ``fn`` so that calling it returns the seconds ``fn()`` took."""

    def run() -> float:
        start = time.perf_counter()
        fn()
        return time.perf_counter() - start

    return run


# -- subprocesses --------------------------------------------------------------------


def run_json(argv: list[str], timeout: float, **kwargs: Any) -> dict[str, Any]:
    """Run a child that prints one JSON object as its last stdout line; return it.

    Raises:
        RuntimeError: the child failed, timed out (it is killed) or printed no JSON.
    """
    try:
        done = subprocess.run(
            argv, capture_output=True, text=True, timeout=timeout, cwd=ROOT, **kwargs
        )
    except subprocess.TimeoutExpired as exc:
        raise RuntimeError(f"{argv[1:3]} killed after {timeout} s") from exc
    lines = [line for line in done.stdout.splitlines() if line.strip()]
    if done.returncode != 0 or not lines:
        raise RuntimeError(
            f"{argv[1:3]} exited with {done.returncode}: {done.stderr.strip()[-2000:]}"
        )
    result: dict[str, Any] = json.loads(lines[-1])
    return result


# -- the machine ---------------------------------------------------------------------


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"


def _git() -> str:
    try:
        rev = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
            cwd=ROOT, timeout=10,
        ).stdout.strip()  # fmt: skip
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
            text=True, cwd=ROOT, timeout=10,
        ).stdout.strip()  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{rev}{' + uncommitted changes' if dirty else ''}" if rev else "unknown"


def cpu_ticks() -> tuple[int, int] | None:
    """(steal, total) CPU ticks so far, from /proc/stat; None where it cannot be read."""
    try:
        with open("/proc/stat") as stat:
            fields = [int(v) for v in stat.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    if len(fields) < 8:
        return None
    return fields[7], sum(fields[:8])  # user nice system idle iowait irq softirq steal


def steal_percent(before: tuple[int, int] | None, after: tuple[int, int] | None) -> float | None:
    """The share of CPU time stolen between two :func:`cpu_ticks` readings."""
    if before is None or after is None or after[1] <= before[1]:
        return None
    return 100.0 * (after[0] - before[0]) / (after[1] - before[1])


def _masking() -> str:
    # websocket-client masks with wsaccel when it could import it (it binds this name).
    import websocket._abnf

    return "wsaccel" if hasattr(websocket._abnf, "XorMaskerSimple") else "websocket-client"


def machine() -> dict[str, Any]:
    """Where the numbers come from."""
    return {
        "nproc": len(os.sched_getaffinity(0))
        if hasattr(os, "sched_getaffinity")
        else os.cpu_count(),
        "cpu": _cpu_model(),
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "switch_interval": sys.getswitchinterval(),
        "packages": {
            name: _version(name)
            for name in (
                "diffusionmaster",
                "websocket-client",
                "websockets",
                "attrs",
                "cattrs",
                "pillow",
                "wsaccel",
            )
        },
        "masking": _masking(),
        "commit": _git(),
    }
