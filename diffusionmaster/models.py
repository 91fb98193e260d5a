"""Result and option classes, shaped for Python users; they know nothing of the wire.

All are immutable attrs classes and safe to share between threads.
"""

from __future__ import annotations

import base64
import binascii
import io
import os
import re
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs

from . import _http

if TYPE_CHECKING:
    from PIL.Image import Image as PILImage

__all__ = ["ControlNet", "Image", "Lora", "UploadedImage", "image_format"]

_MAGIC: tuple[tuple[bytes, str], ...] = (
    (b"\x89PNG\r\n\x1a\n", "png"),
    (b"\xff\xd8\xff", "jpeg"),
)


def image_format(data: bytes) -> str | None:
    """Return ``"png"``, ``"jpeg"`` or ``"webp"`` from the magic bytes, or None."""
    for magic, name in _MAGIC:
        if data.startswith(magic):
            return name
    if len(data) >= 12 and data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    return None


_UNSAFE = re.compile(r"[^A-Za-z0-9_-]+")


def _file_name(server_uuid: str) -> str:
    """A file name made from a server-supplied image UUID: letters, digits, ``-``, ``_``."""
    name = _UNSAFE.sub("_", server_uuid).strip("_")[:100]
    return name or "image"


_EXTENSIONS = {"png": ".png", "jpeg": ".jpg", "webp": ".webp"}
_SUFFIX_FORMATS = {".png": "png", ".jpg": "jpeg", ".jpeg": "jpeg", ".webp": "webp"}


class _Content:
    """The bytes of an image, fetched or decoded at most once (thread-safe)."""

    __slots__ = ("_base64", "_data", "_lock", "downloader")

    def __init__(self, base64_data: str | None, downloader: _http.Downloader | None = None) -> None:
        self._base64 = base64_data
        #: what downloads the image (its client's pool; None: the process default)
        self.downloader = downloader
        self._data: bytes | None = None
        self._lock = threading.Lock()

    def get(self, url: str | None, timeout: float | None) -> bytes:
        with self._lock:
            if self._data is None:
                if self._base64 is not None:
                    # a2b_base64 (what b64decode calls, less a copy): same result, ~20%
                    # faster and less memory on a 10 MB result (bench: large).
                    self._data = binascii.a2b_base64(self._base64)
                    self._base64 = None  # the text is no longer needed: free it
                elif url:
                    downloader = self.downloader or _http.default()
                    self._data, _ = downloader.fetch(url, timeout=timeout)
                else:
                    raise ValueError("this image has neither base64 data nor a URL")
            return self._data

    @property
    def cached(self) -> bool:
        return self._data is not None or self._base64 is not None


@attrs.frozen
class Image:
    """A generated (or processed) image.

    ``read()`` returns the image file's bytes: from the base64 data delivered with
    the result when present (``return_base64=True``), else downloaded from ``url``
    once; later calls return the same bytes. ``save()`` writes it to a file and
    ``to_pil()`` opens it with Pillow. In Jupyter an Image displays inline. Pass an
    Image straight to any call that takes an image: it is referenced by UUID, not
    uploaded again. Immutable and thread-safe.

    Attributes:
        uuid: the server's image UUID; pass the Image itself to other calls to reuse it.
        url: where the image file can be downloaded (``imageSrc``).
        task_uuid: the task that produced it.
        nsfw: the server's NSFW flag (None when not checked or not reported).
        cost: the cost reported by the server, if any.
        alt_text: the server's alt text, if any.
    """

    uuid: str
    url: str | None = None
    task_uuid: str | None = None
    nsfw: bool | None = None
    cost: float | None = None
    alt_text: str | None = None
    _content: _Content = attrs.field(
        factory=lambda: _Content(None), eq=False, repr=False, alias="_content"
    )

    @classmethod
    def _from_result(
        cls,
        *,
        uuid: str,
        url: str | None,
        task_uuid: str | None,
        nsfw: bool | None = None,
        cost: float | None = None,
        alt_text: str | None = None,
        base64_data: str | None = None,
        downloader: _http.Downloader | None = None,
    ) -> Image:
        content = _Content(base64_data, downloader)
        return cls(uuid, url, task_uuid, nsfw, cost, alt_text, _content=content)

    def read(self, *, timeout: float | None = 60.0) -> bytes:
        """Return the image file's bytes (PNG, JPEG or WEBP).

        The bytes are decoded from the result's base64 data, or downloaded from
        :attr:`url` (over a pooled keep-alive connection), on the first call only;
        later calls, from any thread, return the same bytes.

        Args:
            timeout: seconds for the download, when one is needed (None: no limit).

        Raises:
            RequestTimeoutError: the download timed out.
            ConnectionFailedError: the download failed.
            ValueError: the image has neither base64 data nor a URL (built by hand).
        """
        return self._content.get(self.url, timeout)

    @property
    def format(self) -> str | None:
        """``"png"``, ``"jpeg"`` or ``"webp"`` (reads the image if needed)."""
        return image_format(self.read())

    def save(self, path: str | os.PathLike[str], *, timeout: float | None = 60.0) -> Path:
        """Write the image to ``path`` and return the path written.

        The file type follows from ``path``: an existing directory gets a file named
        after the UUID with the suffix of the image's format (``.jpg``, ``.png``,
        ``.webp``); a name without a suffix gets that suffix added; a ``.png``,
        ``.jpg``/``.jpeg`` or ``.webp`` name of another format than the image's is
        converted to it (this needs Pillow); any other suffix gets the bytes as they are.

        Args:
            path: a file name, an existing directory, or a name ending in ``/`` (a
                directory, created if missing). Missing parent folders are created.
                The file name made for a directory uses only the letters, digits,
                ``-`` and ``_`` of the UUID, so no server data can place the file
                outside the directory.
            timeout: seconds for the download, when one is needed.

        Returns:
            The path of the file written.

        Raises:
            RequestTimeoutError, ConnectionFailedError: the download failed.
            ImportError: a conversion was needed and Pillow is not installed.
            OSError: the folder could not be created or the file written (it says which).
        """
        data = self.read(timeout=timeout)
        kind = image_format(data)
        text = os.fspath(path)
        target = Path(text)
        folder = target.is_dir() or text.endswith(("/", os.sep))
        if folder:
            # The name comes from the server: only its safe characters are used, so
            # it can never point outside the folder (no separators, no "..").
            target.mkdir(parents=True, exist_ok=True)
            target = target / f"{_file_name(self.uuid)}{_EXTENSIONS.get(kind or '', '.bin')}"
        elif not target.suffix:
            target = target.with_suffix(_EXTENSIONS.get(kind or "", ".bin"))
        else:
            wanted = _SUFFIX_FORMATS.get(target.suffix.lower())
            if wanted is not None and kind is not None and wanted != kind:
                data = _convert(data, wanted)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
        return target

    def to_pil(self, *, timeout: float | None = 60.0) -> PILImage:
        """Return the image as a ``PIL.Image.Image`` (fully loaded).

        Pillow is needed only by this method (and by :meth:`save` conversions).

        Args:
            timeout: seconds for the download, when one is needed.

        Raises:
            ImportError: Pillow is not installed (the message says how to install it).
            RequestTimeoutError, ConnectionFailedError: the download failed.
        """
        pil_image = _pil()
        picture: PILImage = pil_image.open(io.BytesIO(self.read(timeout=timeout)))
        picture.load()
        return picture

    # -- inline display in Jupyter / IPython ---------------------------------------
    # IPython asks _repr_mimebundle_ first and fills what it lacks from the _repr_*_
    # methods; other front ends ask only the latter. Each returns None when it does
    # not apply, so exactly one image type is shown.

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> dict[str, Any]:
        """Jupyter display: the image inline, with its repr as text."""
        data = self.read()
        kind = image_format(data)
        bundle: dict[str, Any] = {"text/plain": repr(self)}
        if kind in ("png", "jpeg"):
            bundle[f"image/{kind}"] = base64.b64encode(data).decode("ascii")
        elif kind == "webp":
            bundle["text/html"] = _webp_html(data)
        return bundle

    def _repr_png_(self) -> bytes | None:
        """The PNG bytes, for IPython's PNG formatter (None for other formats)."""
        data = self.read()
        return data if image_format(data) == "png" else None

    def _repr_jpeg_(self) -> bytes | None:
        """The JPEG bytes, for IPython's JPEG formatter (None for other formats)."""
        data = self.read()
        return data if image_format(data) == "jpeg" else None

    def _repr_html_(self) -> str | None:
        """An ``<img>`` for WEBP images, which have no IPython formatter of their own."""
        data = self.read()
        return _webp_html(data) if image_format(data) == "webp" else None


def _webp_html(data: bytes) -> str:
    encoded = base64.b64encode(data).decode("ascii")
    return f'<img src="data:image/webp;base64,{encoded}"/>'


def _pil() -> Any:
    """Import ``PIL.Image``, or raise an ImportError that says how to install it."""
    try:
        from PIL import Image as pil_image
    except ImportError as exc:
        raise ImportError(
            "this needs Pillow: pip install 'diffusionmaster[pil]' (or pip install Pillow)"
        ) from exc
    return pil_image


def _convert(data: bytes, kind: str) -> bytes:
    """Re-encode image bytes as ``kind`` (``"png"``, ``"jpeg"`` or ``"webp"``) with Pillow."""
    pil_image = _pil()
    picture = pil_image.open(io.BytesIO(data))
    if kind == "jpeg" and picture.mode not in ("RGB", "L"):
        picture = picture.convert("RGB")  # JPEG has no alpha channel
    buffer = io.BytesIO()
    picture.save(buffer, format=kind.upper())
    return buffer.getvalue()


@attrs.frozen
class UploadedImage:
    """An image stored on the server by :meth:`Client.upload_image`.

    Pass it to any call that takes an image: it is referenced by UUID. Immutable.

    Attributes:
        uuid: the image UUID, usable as input of any other call.
        url: where the stored copy (PNG) can be downloaded.
        task_uuid: the upload task's UUID.
    """

    uuid: str
    url: str | None = None
    task_uuid: str | None = None


@attrs.frozen
class Lora:
    """A LoRA applied to a generation.

    Attributes:
        model: the LoRA's model id, e.g. ``"civitai:132942@146296"``.
        weight: its weight, 0 to 1.
    """

    model: str
    weight: float = 1.0


@attrs.frozen
class ControlNet:
    """A ControlNet guiding a generation (protocol §3).

    Attributes:
        preprocessor: one of :data:`diffusionmaster.tables.CONTROLNET_PREPROCESSORS`.
        guide_image: any image input (path, bytes, file, PIL image, UUID, result).
        weight: 0 to 1.
        start_step, end_step: the steps the ControlNet acts on (0 to steps), or
        start_percentage, end_percentage: the same as fractions (0 to 1).
        control_mode: ``"balanced"``, ``"prompt"`` or ``"controlnet"``.
        low_threshold_canny, high_threshold_canny: canny thresholds (100 and 200 suit most).
    """

    preprocessor: str
    guide_image: Any
    weight: float = 1.0
    start_step: int | None = None
    end_step: int | None = None
    start_percentage: float | None = None
    end_percentage: float | None = None
    control_mode: str | None = None
    low_threshold_canny: int | None = None
    high_threshold_canny: int | None = None
