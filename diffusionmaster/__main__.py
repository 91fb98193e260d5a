"""``python -m diffusionmaster``: the command line (see :mod:`diffusionmaster.cli`)."""

from __future__ import annotations

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
