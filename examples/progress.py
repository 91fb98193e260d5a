"""Show each image as it arrives, with a progress bar (tqdm, the ``progress`` extra).

python examples/progress.py
"""

from __future__ import annotations

from _connect import connect

try:
    from tqdm import tqdm
except ImportError:  # tqdm is optional: count in plain text instead
    tqdm = None

with connect() as client:
    total = 6
    bar = tqdm(total=total, unit="image") if tqdm is not None else None
    uuids = []
    for n, image in enumerate(client.stream_images("a fleet of boats", number_results=total), 1):
        uuids.append(image.uuid)  # each image is usable as soon as it arrives
        if bar is not None:
            bar.update(1)
        else:
            print(f"{n}/{total}")
    if bar is not None:
        bar.close()
    print("images:", uuids)
