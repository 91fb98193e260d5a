"""Case 4, large uploads: a 10 MB image through ``Client.upload_image``.

Ours: ``client.upload_image(data)`` until its UUID is back. The baseline, on its own
websocket-client connection: base64 of the same bytes, the same ``newImageUpload``
frame built by string concatenation, ``ws.send``, and the reply read. Each call
uploads different bytes (a counter in a PNG text chunk), since the client uploads
the same content only once. Both include the server's decode of the image (the
same for both). Target: <= 1.2x the raw send.
"""

from __future__ import annotations

import base64
import io
import os
import struct
import uuid
import zlib
from itertools import count
from typing import Any

from bench._common import (
    CaseResult,
    EmulatorProcess,
    RawConnection,
    interleave,
    make_client,
    ratio_row,
    summary,
    timed,
)

NAME = "upload"
TITLE = "Large uploads (upload_image of a PNG)"
MB = 1 << 20


def noise_png(size: int) -> bytes:
    """An uncompressed RGB PNG of random pixels, about ``size`` bytes."""
    from PIL import Image

    side = int((size / 3) ** 0.5)
    picture = Image.frombytes("RGB", (side, side), os.urandom(side * side * 3))
    buffer = io.BytesIO()
    picture.save(buffer, "PNG", compress_level=0)
    return buffer.getvalue()


def tagged(png: bytes, tag: int) -> bytes:
    """``png`` with a ``tEXt`` chunk holding ``tag`` after its header: distinct bytes."""
    body = b"tEXt" + b"bench\0" + str(tag).encode()
    chunk = struct.pack("!I", len(body) - 4) + body + struct.pack("!I", zlib.crc32(body))
    split = 8 + 25  # the signature, then the IHDR chunk (13 bytes of data + 12)
    return png[:split] + chunk + png[split:]


def raw_upload(raw: RawConnection, data: bytes) -> str:
    task_uuid = str(uuid.uuid4())
    frame = (
        '{"newImageUpload":{"imageBase64":"data:image/png;base64,'
        + base64.b64encode(data).decode("ascii")
        + f'","taskUUID":"{task_uuid}","taskType":7}}}}'
    )
    raw.ws.send(frame)
    while True:
        reply = raw.recv_json().get("newUploadedImageUUID")
        if reply and reply["taskUUID"] == task_uuid:
            uploaded: str = reply["newImageUUID"]
            return uploaded


def run(quick: bool) -> CaseResult:
    size, rounds = (1 * MB, 1) if quick else (10 * MB, 10)
    result = CaseResult(NAME, TITLE)
    png = noise_png(size)
    tags = count()
    with EmulatorProcess() as emu, make_client(emu.url, timeout=60) as client:
        raw = RawConnection(emu.url)

        def ours() -> Any:
            return client.upload_image(tagged(png, next(tags)))

        def baseline() -> Any:
            return raw_upload(raw, tagged(png, next(tags)))

        try:
            samples = interleave({"ours": timed(ours), "raw": timed(baseline)}, rounds, warmup=1)
        finally:
            raw.close()
    label = f"{len(png) / MB:.0f} MB"
    ours_s, base_s = summary(samples["ours"]), summary(samples["raw"])
    result.details = {"unit": "s", "png_bytes": len(png), "ours": ours_s, "raw": base_s}
    result.rows.append(
        ratio_row(f"{label} median", ours_s["median"] * 1e3, base_s["median"] * 1e3, "ms", 1.2)
    )
    result.notes.append(
        f"{rounds} uploads per side of a {len(png)}-byte PNG; the tagging that makes each "
        "upload distinct is timed on both sides."
    )
    return result
