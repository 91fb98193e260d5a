"""Generate four images and save them.

python examples/quickstart.py [OUTPUT_FOLDER]
"""

from __future__ import annotations

import sys
from pathlib import Path

from _connect import connect

out = Path(sys.argv[1] if len(sys.argv) > 1 else "diffusionmaster-examples")
out.mkdir(parents=True, exist_ok=True)

with connect() as client:
    images = client.text2img("a lighthouse at dawn, oil painting", number_results=4, seed=7)
    for image in images:
        print(image.save(out))  # <folder>/<uuid>.jpg
