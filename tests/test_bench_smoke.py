"""A smoke run of the benchmark suite (bench/): every case runs and reports.

Speed goals live in the benchmark (``python -m bench``), never here: these tests
assert that the suite works, not how fast anything is.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bench import CASES
from bench.__main__ import main
from diffusionmaster.testing import Emulator

from .conftest import make_client, seconds

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent


def test_quick_run_reports_every_case(tmp_path: Path) -> None:
    """``python -m bench --quick`` prints a row for every case and writes them all as JSON."""
    out = tmp_path / "results.json"
    done = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--json", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=seconds(120),
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(out.read_text())
    assert report["quick"] is True
    assert [case["name"] for case in report["cases"]] == list(CASES)
    for case in report["cases"]:
        assert case["rows"], case
        if case["name"] != "legacy":  # the legacy SDK may be absent: the case then says so
            assert case["error"] is None, case["error"]
    table_cases = {line.split("|")[1].strip() for line in done.stdout.splitlines() if "|" in line}
    assert set(CASES) <= table_cases
    assert {"nproc", "cpu", "python", "packages"} <= set(report["machine"])


def test_one_case_can_run_alone(tmp_path: Path) -> None:
    """Naming a case runs only that case."""
    out = tmp_path / "one.json"
    assert main(["resume", "--quick", "--json", str(out)]) == 0
    assert [case["name"] for case in json.loads(out.read_text())["cases"]] == ["resume"]


def test_an_unknown_case_is_refused(tmp_path: Path) -> None:
    """An unknown case name is a usage error (exit status 2), and nothing runs."""
    with pytest.raises(SystemExit) as info:
        main(["nonesuch", "--json", str(tmp_path / "none.json")])
    assert info.value.code == 2
    assert not (tmp_path / "none.json").exists()


def test_the_emulator_pads_result_images_to_image_bytes() -> None:
    """With image_bytes set, a base64 result decodes to a JPEG of exactly that size."""
    with Emulator(api_keys=["test-key"]) as emu, make_client(emu) as client:
        emu.image_bytes = 300_000
        (image,) = client.text2img("a big one", return_base64=True)
        data = image.read()
        assert (len(data), data[:3]) == (300_000, b"\xff\xd8\xff")


def test_image_bytes_must_be_a_non_negative_int() -> None:
    """A negative or non-int image_bytes raises ValueError."""
    emu = Emulator()
    for value in (-1, 1.5, True):
        with pytest.raises(ValueError, match="image_bytes"):
            emu.image_bytes = value  # type: ignore[assignment]
