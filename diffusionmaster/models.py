"""Result and option classes, shaped for Python users; they know nothing of the wire.

All are immutable attrs classes and safe to share between threads.
"""

from __future__ import annotations

import base64
import os
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


_EXTENSIONS = {"png": ".png", "jpeg": ".jpg", "webp": ".webp"}


class _Content:
    """The bytes of an image, fetched or decoded at most once (thread-safe)."""

    __slots__ = ("_base64", "_data", "_lock")

    def __init__(self, base64_data: str | None) -> None:
        self._base64 = base64_data
        self._data: bytes | None = None
        self._lock = threading.Lock()

    def get(self, url: str | None, timeout: float | None) -> bytes:
        with self._lock:
            if self._data is None:
                if self._base64 is not None:
                    self._data = base64.b64decode(self._base64)
                    self._base64 = None  # the text is no longer needed: free it
                elif url:
                    self._data, _ = _http.fetch(url, timeout=timeout)
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
    once; later calls return the same bytes. Thread-safe.

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
    ) -> Image:
        return cls(uuid, url, task_uuid, nsfw, cost, alt_text, _content=_Content(base64_data))

    def read(self, *, timeout: float | None = 60.0) -> bytes:
        """Return the image file's bytes (PNG, JPEG or WEBP).

        Args:
            timeout: seconds for the download, when one is needed.

        Raises:
            RequestTimeoutError: the download timed out.
            ConnectionFailedError: the download failed.
        """
        return self._content.get(self.url, timeout)

    @property
    def format(self) -> str | None:
        """``"png"``, ``"jpeg"`` or ``"webp"`` (reads the image if needed)."""
        return image_format(self.read())

    def save(self, path: str | os.PathLike[str], *, timeout: float | None = 60.0) -> Path:
        """Write the image to ``path`` and return the path written.

        When ``path`` is an existing directory the file is named after the UUID; when
        it has no suffix the suffix of the image's real format is added.
        """
        data = self.read(timeout=timeout)
        target = Path(path)
        suffix = _EXTENSIONS.get(image_format(data) or "", ".bin")
        if target.is_dir():
            target = target / f"{self.uuid}{suffix}"
        elif not target.suffix:
            target = target.with_suffix(suffix)
        target.write_bytes(data)
        return target

    def to_pil(self) -> PILImage:
        """Return the image as a ``PIL.Image.Image`` (needs Pillow)."""
        try:
            from PIL import Image as PILModule
        except ImportError as exc:  # pragma: no cover - depends on the environment
            raise ImportError(
                "Image.to_pil() needs Pillow: pip install 'diffusionmaster[pil]' "
                "(or pip install Pillow)"
            ) from exc
        import io

        pil = PILModule.open(io.BytesIO(self.read()))
        pil.load()
        return pil

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> dict[str, Any]:
        """Jupyter display: the image inline, with its UUID as text."""
        data = self.read()
        kind = image_format(data)
        bundle: dict[str, Any] = {"text/plain": repr(self)}
        if kind in ("png", "jpeg"):
            bundle[f"image/{kind}"] = base64.b64encode(data).decode("ascii")
        elif kind == "webp":
            encoded = base64.b64encode(data).decode("ascii")
            bundle["text/html"] = f'<img src="data:image/webp;base64,{encoded}"/>'
        return bundle


@attrs.frozen
class UploadedImage:
    """An image stored on the server by :meth:`Client.upload_image`.

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
