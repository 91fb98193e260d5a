"""The suite's markers: ``-m "not slow and not interop"`` is the fast inner loop."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import seconds

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
#: Modules that start subprocesses or servers throughout: never in the fast loop.
SLOW_MODULES = {
    "tests/test_bench_smoke.py", "tests/test_django.py", "tests/test_examples.py",
    "tests/test_gunicorn.py", "tests/test_notebook.py", "tests/test_packaging.py",
    "tests/test_plugin.py", "tests/test_soak.py",
}  # fmt: skip


def _collect(*args: str) -> list[str]:
    """The node ids pytest collects with ``args`` (markers must be registered)."""
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider",
         "--strict-markers", *args],
        capture_output=True, text=True, cwd=ROOT, timeout=seconds(60), check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    return [line for line in result.stdout.splitlines() if "::" in line]


def test_fast_loop_leaves_out_slow_and_interop_tests() -> None:
    """The fast selection has no interop test and nothing from the subprocess-heavy modules,
    while the plain command collects them all."""
    everything = _collect()
    fast = _collect("-m", "not slow and not interop")
    modules = {node.split("::")[0] for node in everything}
    assert SLOW_MODULES | {"tests/interop/test_sdk.py"} <= modules
    assert {node.split("::")[0] for node in fast} & SLOW_MODULES == set()
    assert [node for node in fast if node.startswith("tests/interop/")] == []
    assert "tests/test_fork.py" in {node.split("::")[0] for node in fast}
    assert 0 < len(fast) < len(everything)
