"""The scripts under examples/, each run as a subprocess against the emulator."""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from diffusionmaster.testing import Emulator

from .conftest import API_KEY, seconds

pytestmark = pytest.mark.slow

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
#: Scripts that connect where DIFFUSIONMASTER_URL / DIFFUSIONMASTER_API_KEY say.
CLIENT_SCRIPTS = ["every_task.py", "prefork.py", "progress.py", "quickstart.py", "threads.py"]
#: Scripts that always embed their own emulator (they inject faults into it).
EMBEDDED_SCRIPTS = ["resume.py"]


def _run(script: str, cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("DIFFUSIONMASTER_")}
    environment.update(env)
    return subprocess.run(
        [sys.executable, str(EXAMPLES / script)],
        capture_output=True,
        text=True,
        timeout=seconds(60),
        cwd=cwd,
        env=environment,
        check=False,
    )


def test_every_script_is_tested() -> None:
    """Each script under examples/ is in one of the lists this module runs."""
    scripts = sorted(p.name for p in EXAMPLES.glob("*.py") if not p.name.startswith(("_", "test_")))
    assert scripts == sorted(CLIENT_SCRIPTS + EMBEDDED_SCRIPTS)


@pytest.mark.parametrize("script", CLIENT_SCRIPTS)
def test_script_runs_against_the_given_server(
    script: str, emulator: Emulator, tmp_path: Path
) -> None:
    """The script exits 0 after sending its tasks to the server named by the environment."""
    if script == "prefork.py" and sys.platform == "win32":
        pytest.skip("fork() is POSIX only")
    result = _run(
        script, tmp_path, DIFFUSIONMASTER_URL=emulator.url, DIFFUSIONMASTER_API_KEY=API_KEY
    )
    assert result.returncode == 0, result.stderr
    assert any("newTask" in frame for frame in emulator.received_frames())


def test_quickstart_runs_offline(tmp_path: Path) -> None:
    """Without a key quickstart.py embeds an emulator and saves four JPEG files."""
    result = _run("quickstart.py", tmp_path)
    assert result.returncode == 0, result.stderr
    saved = sorted(tmp_path.glob("diffusionmaster-examples/*.jpg"))
    assert sorted(Path(tmp_path, line) for line in result.stdout.splitlines()) == saved
    assert len(saved) == 4


def test_resume_script(tmp_path: Path) -> None:
    """resume.py shows a resumed call returning its images and an expired one failing."""
    result = _run("resume.py", tmp_path)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert [line.split()[0] for line in lines] == ["resumed", "session", "new"]
    assert lines[0].endswith(": 3 images")


# -- the README's Python snippets -------------------------------------------------------

README = EXAMPLES.parent / "README.md"


def _readme_snippets() -> list[tuple[str, str, str]]:
    """(section, marker, code) of each ```python block; the marker is the HTML comment
    on the line before the fence (``<!-- not run: ... -->``, ``<!-- pytest: ... -->``) or ""."""
    snippets: list[tuple[str, str, str]] = []
    section, previous, code = "", "", None
    for line in README.read_text(encoding="utf-8").splitlines():
        if code is not None:
            if line == "```":
                marker = (
                    previous.split(":")[0].removeprefix("<!-- ")
                    if previous.startswith("<!--")
                    else ""
                )
                snippets.append((section, marker, "\n".join(code)))
                code, previous = None, ""
            else:
                code.append(line)
        elif line == "```python":
            code = []
        else:
            if line.startswith("#"):
                section = line.lstrip("# ")
            if line.strip():
                previous = line
    return snippets


RUNNABLE = [(s, c) for s, m, c in _readme_snippets() if m == ""]


def test_readme_markers_are_known() -> None:
    """Every README snippet is runnable, run by the plugin tests, or says why it is not run."""
    assert {m for _, m, _ in _readme_snippets()} == {"", "not run", "pytest"}


@pytest.mark.parametrize(
    "code", [c for _, c in RUNNABLE], ids=[f"{n}-{s}" for n, (s, _) in enumerate(RUNNABLE)]
)
def test_readme_snippet_runs(
    code: str, emulator: Emulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The README snippet runs against the emulator standing in for the production service."""
    from PIL import Image as PILImage

    import diffusionmaster.client

    monkeypatch.setitem(diffusionmaster.client.ENDPOINTS, "production", emulator.url)
    monkeypatch.setenv("DIFFUSIONMASTER_API_KEY", API_KEY)
    monkeypatch.chdir(tmp_path)
    PILImage.new("RGB", (640, 480), "teal").save("photo.png")
    PILImage.new("L", (512, 512), 255).save("mask.png")
    namespace: dict[str, object] = {"__name__": "readme"}
    with _logging_restored():  # the Logging snippet configures logging
        exec(compile(code, "README.md", "exec"), namespace)
        for name, value in list(namespace.items()):
            if name.startswith("test_") and callable(value):
                value()
    if "Client(" in code and "Emulator(" not in code:  # it ran against this emulator
        assert emulator.connections_opened >= 1


@contextlib.contextmanager
def _logging_restored() -> Iterator[None]:
    root, library = logging.getLogger(), logging.getLogger("diffusionmaster")
    handlers, levels = list(root.handlers), (root.level, library.level)
    try:
        yield
    finally:
        for handler in set(root.handlers) - set(handlers):
            root.removeHandler(handler)
        root.setLevel(levels[0])
        library.setLevel(levels[1])
