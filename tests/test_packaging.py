"""The sdist carries what the test suite needs, and the metadata what users look for."""

from __future__ import annotations

import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent


def test_sdist_contains_tests_tools_examples_bench_and_docs(tmp_path: Path) -> None:
    """An unpacked sdist has the suite (with its data), tools, examples, bench and docs."""
    code = (
        "import sys; from setuptools import build_meta; print(build_meta.build_sdist(sys.argv[1]))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=120, check=True,
    )  # fmt: skip
    name = done.stdout.strip().splitlines()[-1]
    with tarfile.open(tmp_path / name) as archive:
        members = {m.name.split("/", 1)[1] for m in archive.getmembers() if "/" in m.name}
    for path in [
        "LICENSE", "CHANGELOG.md", "README.md", "tests/conftest.py",
        "tests/data/protocol-examples.json", "tests/interop/sdk_driver.py",
        "tools/legacy_sdk.py", "examples/quickstart.ipynb", "examples/django_app/manage.py",
        "bench/__main__.py", "bench/RESULTS.md", "diffusionmaster/py.typed",
    ]:  # fmt: skip
        assert path in members, path
    assert "PKG-INFO" in members


def test_metadata_claims_each_tested_python() -> None:
    """The classifiers name every Python version CI runs."""
    text = (ROOT / "setup.cfg").read_text()
    for version in ("3.10", "3.11", "3.12", "3.13"):
        assert f"Programming Language :: Python :: {version}" in text
    assert "license_files = LICENSE" in text and (ROOT / "LICENSE").is_file()
