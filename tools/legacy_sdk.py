"""The official legacy SDK (``runware==0.1.5``) in a virtual environment of its own.

It pins ``websockets==12.0``, which must not constrain our dependencies, so it never
runs in our environment: :func:`python` makes (once, then reuses) a venv under the
user's cache folder and returns its interpreter, for subprocess use by the interop
tests and the benchmarks.
"""

from __future__ import annotations

import os
import subprocess
import sys
import venv
from pathlib import Path

REQUIREMENT = "runware==0.1.5"


class SDKUnavailable(RuntimeError):
    """The legacy SDK could not be installed (no network, or the registry refused)."""


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(Path.home(), ".cache")
    return Path(base) / "diffusionmaster" / "runware-0.1.5-venv"


def _interpreter(root: Path) -> Path:
    return root / ("Scripts/python.exe" if sys.platform == "win32" else "bin/python")


def _works(python: Path) -> bool:
    if not python.exists():
        return False
    check = subprocess.run(
        [str(python), "-c", "import runware, websockets; assert websockets.__version__ == '12.0'"],
        capture_output=True,
        timeout=60,
    )
    return check.returncode == 0


def python(timeout: float = 300.0) -> Path:
    """Return the interpreter of a venv with the legacy SDK, making the venv if needed.

    Raises:
        SDKUnavailable: the venv could not be made or the SDK not installed; the message
            carries pip's output.
    """
    root = cache_dir()
    interpreter = _interpreter(root)
    if _works(interpreter):
        return interpreter
    root.parent.mkdir(parents=True, exist_ok=True)
    venv.EnvBuilder(with_pip=True, clear=True).create(root)
    install = subprocess.run(
        [str(interpreter), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
         REQUIREMENT],
        capture_output=True,
        text=True,
        timeout=timeout,
    )  # fmt: skip
    if install.returncode != 0 or not _works(interpreter):
        raise SDKUnavailable(
            f"could not install {REQUIREMENT} into {root}: pip exited with "
            f"{install.returncode}\n{install.stdout}\n{install.stderr}"
        )
    return interpreter


if __name__ == "__main__":
    print(python())
