"""examples/quickstart.ipynb, executed by nbclient in a real ipykernel against the emulator."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import pytest

from diffusionmaster.testing import Emulator

from .conftest import API_KEY, seconds

pytestmark = pytest.mark.slow

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")
from jupyter_client.kernelspec import KernelSpec, KernelSpecManager  # noqa: E402
from jupyter_client.manager import KernelManager  # noqa: E402

NOTEBOOK = Path(__file__).resolve().parent.parent / "examples" / "quickstart.ipynb"


class _ThisPython(KernelSpecManager):
    """Every kernel name means ipykernel on this interpreter: no installed kernelspec needed."""

    def get_kernel_spec(self, kernel_name: str) -> KernelSpec:
        return KernelSpec(
            argv=[sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
            display_name="Python 3 (tests)",
            language="python",
        )


def _execute(tmp_path: Path, env: dict[str, str]) -> Any:
    """Run the notebook in a fresh kernel with ``env``; return the executed notebook."""
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    manager = KernelManager(kernel_spec_manager=_ThisPython(), kernel_name="python3")
    client = nbclient.NotebookClient(
        notebook,
        km=manager,
        timeout=int(seconds(30)),
        startup_timeout=int(seconds(30)),
        resources={"metadata": {"path": str(tmp_path)}},
    )
    client.execute(env=env)
    return notebook


def _code_cells_outputs(notebook: Any) -> list[list[Any]]:
    return [cell.outputs for cell in notebook.cells if cell.cell_type == "code"]


def _images(outputs: list[Any]) -> list[str]:
    return [
        kind
        for output in outputs
        if output.output_type in ("display_data", "execute_result")
        for kind in output.data
        if kind in ("image/jpeg", "image/png")
    ]


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DIFFUSIONMASTER_")}
    env.update(extra)
    return env


def test_notebook_shows_images_from_the_given_server(emulator: Emulator, tmp_path: Path) -> None:
    """Run against the test's emulator, the notebook shows the generated, streamed and
    upscaled images inline and draws a progress bar."""
    notebook = _execute(
        tmp_path, _env(DIFFUSIONMASTER_URL=emulator.url, DIFFUSIONMASTER_API_KEY=API_KEY)
    )
    _, generated, streamed, upscaled, _ = _code_cells_outputs(notebook)
    assert _images(generated) == ["image/jpeg", "image/jpeg"]
    assert _images(streamed) == ["image/jpeg"]
    assert _images(upscaled) == ["image/jpeg"]
    progress = "".join(o.text for o in streamed if o.output_type == "stream")
    assert "4/4" in progress
    tasks = [f for f in emulator.received_frames() if "newTask" in f or "newUpscaleGan" in f]
    assert len(tasks) == 3
    assert len(list((tmp_path / "diffusionmaster-notebook").glob("*.jpg"))) == 3


def test_notebook_runs_offline_with_its_own_emulator(tmp_path: Path) -> None:
    """Without a key the notebook starts an emulator in the kernel and still shows images."""
    notebook = _execute(tmp_path, _env())
    _, generated, *_ = _code_cells_outputs(notebook)
    assert _images(generated) == ["image/jpeg", "image/jpeg"]
