"""Send prompts to the workers and save the images they return into ``celery-images/``.

Usage: ``python -m celery_app "a lighthouse at dawn" "a kite over the sea"``.
"""

from __future__ import annotations

import sys

from diffusionmaster import Image

from . import text2img


def main(prompts: list[str]) -> None:
    pending = [(prompt, text2img.delay(prompt)) for prompt in prompts]
    for prompt, result in pending:
        for item in result.get(timeout=300):
            image = Image.from_dict(item)
            print(f"{prompt!r}: {image.save('celery-images/')}")


if __name__ == "__main__":
    main(sys.argv[1:] or ["a lighthouse at dawn"])
