"""Image inputs: everything a user may pass where the API takes an image.

:func:`load` turns an input into either the UUID of an image the server already
has, or the bytes of a local image (checked to be PNG, JPEG or WEBP by its magic
bytes) that the client uploads. Pure apart from reading the file a path names;
Pillow is never imported here (a PIL image can only exist once the user did).
"""

from __future__ import annotations

import io
import os
import re
import sys
import uuid
from typing import IO, Any, Union

from .errors import InvalidArgumentError
from .models import Image, UploadedImage, image_format

__all__ = ["ImageInput", "load", "load_all"]

#: Anything accepted as an image: a path, bytes, a binary file object, a PIL image,
#: an image UUID string, or a previous result.
ImageInput = Union[str, "os.PathLike[str]", bytes, bytearray, memoryview, IO[bytes], Image,
                   UploadedImage, Any]  # fmt: skip

_EXPECTED = (
    "expected an image: a path, bytes, a binary file object, a PIL image, an image "
    "UUID, or an Image/UploadedImage result"
)
# PIL modes that PNG stores as they are; others (CMYK, YCbCr, F, ...) are converted first.
_PNG_MODES = frozenset({"1", "L", "LA", "I", "I;16", "P", "RGB", "RGBA"})


#: The form of the server's image ids: 8-4-4-4-12 hex digits (either case).
_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")

#: What a mistyped UUID looks like: hex digits and hyphens only (no path would).
_UUID_LIKE = re.compile(r"[0-9a-fA-F-]{16,}")


def is_uuid(text: str) -> bool:
    """Tell whether ``text`` is a UUID in the server's form (8-4-4-4-12 hex digits)."""
    return _UUID.fullmatch(text) is not None


def _other_uuid_form(text: str) -> str | None:
    """The 8-4-4-4-12 form of a UUID written another way (braces, ``urn:uuid:``, no
    hyphens), or None when ``text`` is no UUID at all."""
    try:
        return str(uuid.UUID(text))
    except ValueError:
        return None


def _result_uuid(name: str, image: Image | UploadedImage) -> str:
    # A result's UUID goes on the wire as it is: refuse one that is no UUID (made by
    # hand, or sent by a server) rather than send it, paying for an error at best.
    value = image.uuid
    if not isinstance(value, str) or not is_uuid(value):
        kind = type(image).__name__
        raise InvalidArgumentError(
            name, f"{kind}.uuid must be an image UUID (8-4-4-4-12 hex digits), got {value!r}"
        )
    return value


def _checked(name: str, data: bytes, origin: str) -> bytes:
    if image_format(data) is None:
        shown = "empty" if not data else f"first bytes {data[:8]!r}"
        raise InvalidArgumentError(name, f"{origin} is not a PNG, JPEG or WEBP image ({shown})")
    return data


def _pil_png(name: str, image: Any) -> bytes:
    if image.mode not in _PNG_MODES:
        alpha = "A" in image.getbands()
        image = image.convert("RGBA" if alpha else "RGB")
    buffer = io.BytesIO()
    try:
        image.save(buffer, format="PNG")
    except (OSError, ValueError, KeyError) as exc:
        raise InvalidArgumentError(name, f"cannot encode the PIL image as PNG: {exc}") from exc
    return buffer.getvalue()


def load(name: str, image: object) -> str | bytes:
    """Return the UUID the input names, or the bytes of a local image.

    Args:
        name: the parameter's name, for error messages (``"image"``, ``"mask"``...).
        image: the input: a path (``str`` or ``os.PathLike``), ``bytes`` (or
            ``bytearray``/``memoryview``), a binary file object (read from its
            current position), a ``PIL.Image.Image`` (encoded as PNG), an image
            UUID string, or an :class:`Image` / :class:`UploadedImage` result.

    Returns:
        The image UUID (a ``str``) of a server-side image, or the file bytes
        (``bytes``) of a local one.

    Raises:
        InvalidArgumentError: a missing or unreadable file, data that is not PNG,
            JPEG or WEBP, a UUID not in the server's 8-4-4-4-12 form (also as the
            ``uuid`` of an Image or UploadedImage), or an input of another type;
            the message names ``name``.
    """
    if isinstance(image, (Image, UploadedImage)):
        return _result_uuid(name, image)
    if isinstance(image, str) and is_uuid(image):
        return image
    if isinstance(image, str) and not os.path.exists(image):
        canonical = _other_uuid_form(image)
        if canonical is not None:
            raise InvalidArgumentError(
                name, f"{image!r} is not an image UUID in the server's form (8-4-4-4-12 hex "
                f"digits); pass {canonical!r}",
            )  # fmt: skip
    if isinstance(image, str) and image.startswith(("http://", "https://")):
        raise InvalidArgumentError(
            name, "image URLs are not accepted here: pass the file, its bytes, or an image UUID"
        )
    if isinstance(image, (str, os.PathLike)):
        path = os.fspath(image)
        try:
            with open(path, "rb") as f:
                data = f.read()
        except OSError as exc:
            if isinstance(exc, FileNotFoundError) and _UUID_LIKE.fullmatch(path):
                raise InvalidArgumentError(
                    name, f"{path!r} is neither an image UUID (8-4-4-4-12 hex digits) nor a "
                    "readable file",
                ) from exc  # fmt: skip
            raise InvalidArgumentError(
                name, f"cannot read image file {path!r}: {exc.strerror or exc}"
            ) from exc
        return _checked(name, data, f"file {path!r}")
    if isinstance(image, (bytes, bytearray, memoryview)):
        return _checked(name, bytes(image), "the data")
    pil = sys.modules.get("PIL.Image")
    if pil is not None and isinstance(image, pil.Image):
        return _pil_png(name, image)
    read = getattr(image, "read", None)
    if callable(read):
        try:
            data = read()
        except (OSError, ValueError) as exc:
            raise InvalidArgumentError(name, f"cannot read the file object: {exc}") from exc
        if not isinstance(data, (bytes, bytearray)):
            raise InvalidArgumentError(name, "file objects must be opened in binary mode ('rb')")
        return _checked(name, bytes(data), "the file object")
    raise InvalidArgumentError(name, f"{_EXPECTED}; got {type(image).__name__}")


def load_all(images: dict[str, object]) -> dict[str, str | bytes]:
    """:func:`load` every input of ``images`` (name -> input; None values skipped).

    All are read and checked before any is uploaded, so a bad second input never
    leaves the first one uploaded for nothing.
    """
    return {name: load(name, image) for name, image in images.items() if image is not None}
