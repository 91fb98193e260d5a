"""Image inputs: everything a user may pass where the API takes an image.

:func:`load` turns an input into either the UUID of an image the server already
has, or the bytes of a local image (checked to be PNG, JPEG or WEBP) that the
client uploads. Pure apart from reading the file a path names.
"""

from __future__ import annotations

import io
import os
import uuid
from typing import IO, Any, Union

from .errors import InvalidArgumentError
from .models import Image, UploadedImage, image_format

__all__ = ["ImageInput", "load"]

#: Anything accepted as an image: a path, bytes, a binary file object, a PIL image,
#: an image UUID string, or a previous result.
ImageInput = Union[str, "os.PathLike[str]", bytes, bytearray, memoryview, IO[bytes], Image,
                   UploadedImage, Any]  # fmt: skip


def _is_uuid(text: str) -> bool:
    try:
        uuid.UUID(text)
    except ValueError:
        return False
    return True


def _checked(name: str, data: bytes, origin: str) -> bytes:
    if image_format(data) is None:
        raise InvalidArgumentError(
            name, f"{origin} is not a PNG, JPEG or WEBP image (first bytes {data[:8]!r})"
        )
    return data


def load(name: str, image: object) -> str | bytes:
    """Return the UUID the input names, or the bytes of a local image.

    Raises:
        InvalidArgumentError: a missing or unreadable file, unsupported data, or an
            input of another type; the message names the parameter ``name``.
    """
    if isinstance(image, (Image, UploadedImage)):
        return image.uuid
    if isinstance(image, str) and _is_uuid(image):
        return image
    if isinstance(image, (str, os.PathLike)):
        path = os.fspath(image)
        try:
            with open(path, "rb") as f:
                data = f.read()
        except OSError as exc:
            raise InvalidArgumentError(
                name, f"cannot read image file {path!r}: {exc.strerror or exc}"
            ) from exc
        return _checked(name, data, f"file {path!r}")
    if isinstance(image, (bytes, bytearray, memoryview)):
        return _checked(name, bytes(image), "the data")
    read = getattr(image, "read", None)
    if callable(read):
        try:
            data = read()
        except (OSError, ValueError) as exc:
            raise InvalidArgumentError(name, f"cannot read the file object: {exc}") from exc
        if not isinstance(data, bytes):
            raise InvalidArgumentError(name, "file objects must be opened in binary mode ('rb')")
        return _checked(name, data, "the file object")
    if type(image).__module__.startswith("PIL.") and hasattr(image, "save"):
        buffer = io.BytesIO()
        try:
            image.save(buffer, format="PNG")
        except (OSError, ValueError) as exc:
            raise InvalidArgumentError(name, f"cannot encode the PIL image as PNG: {exc}") from exc
        return buffer.getvalue()
    raise InvalidArgumentError(
        name,
        "expected an image: a path, bytes, a binary file object, a PIL image, an image "
        f"UUID, or an Image/UploadedImage result; got {type(image).__name__}",
    )
