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
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs

from . import _http
from .errors import InvalidArgumentError

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
    """The bytes of an image, fetched or decoded at most once (thread-safe).

    Copying and pickling keep the bytes already in memory (the base64 text the
    server sent, or the bytes decoded or downloaded) and never download. A pickled
    copy forgets its downloader (a client's pool of sockets belongs to one process):
    it downloads, when it must, through the process's own default downloader,
    which is fork-safe like every :class:`~diffusionmaster._http.Downloader`. A deep
    copy in the same process keeps the downloader.
    """

    __slots__ = ("_base64", "_data", "_lock", "downloader", "inline")

    def __init__(
        self,
        base64_data: str | None,
        downloader: _http.Downloader | None = None,
        data: bytes | None = None,
        inline: bool | None = None,
    ) -> None:
        self._base64 = base64_data
        #: what downloads the image (its client's pool; None: the process default)
        self.downloader = downloader
        self._data: bytes | None = data
        #: whether the bytes came with the result (base64), not from a download
        self.inline = base64_data is not None if inline is None else inline
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

    def snapshot(self) -> tuple[str | None, bytes | None]:
        """(base64 text, bytes) as they are now, without waiting for a download.

        Lock-free on purpose (pickling must not wait for another thread's download):
        get() sets ``_data`` before it clears ``_base64``, so reading ``_base64``
        first never misses both.
        """
        text = self._base64
        data = self._data
        return (None if data is not None else text), data

    def base64_text(self) -> str | None:
        """The bytes as base64 text when they came with the result (cheap), else None."""
        if not self.inline:
            return None
        text, data = self.snapshot()
        if text is not None:
            return text
        return None if data is None else base64.b64encode(data).decode("ascii")

    def __reduce__(self) -> tuple[Any, ...]:
        # The lock cannot be pickled and the downloader must not be (its sockets
        # belong to this process): rebuilt empty / the process default on load.
        text, data = self.snapshot()
        return (_Content, (text, None, data, self.inline))

    def __copy__(self) -> _Content:
        text, data = self.snapshot()
        return _Content(text, self.downloader, data, self.inline)

    def __deepcopy__(self, memo: dict[int, Any]) -> _Content:
        # str and bytes are immutable: sharing them is a deep copy. The downloader is
        # a resource of this process, shared like the client that owns it.
        return self.__copy__()


@attrs.frozen
class Image:
    """A generated (or processed) image.

    ``read()`` returns the image file's bytes: from the base64 data delivered with
    the result when present (``return_base64=True``), else downloaded from ``url``
    once; later calls return the same bytes. ``save()`` writes it to a file and
    ``to_pil()`` opens it with Pillow. In Jupyter an Image displays inline. Pass an
    Image straight to any call that takes an image: it is referenced by UUID, not
    uploaded again. Immutable and thread-safe.

    Images travel: they pickle (for ``multiprocessing`` and Celery's pickle
    serialiser), ``copy.deepcopy``, and have a plain-dict form for JSON
    (:meth:`to_dict`, :meth:`from_dict`). A pickled or copied image carries the
    bytes it holds in memory (the base64 data of the result, or bytes already read)
    and never downloads to be pickled; an image without bytes downloads them from
    :attr:`url` when read, in the process that reads it, through that process's own
    connection pool (never the sockets of the process that pickled it).

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

    def to_dict(self, *, include_data: bool | None = None) -> dict[str, Any]:
        """Return the image as a plain dict of JSON types, for JSON serialisers (Celery).

        :meth:`from_dict` makes the Image again. The keys are ``uuid``, ``url``,
        ``task_uuid``, ``nsfw``, ``cost``, ``alt_text`` and ``base64`` (the file's
        bytes as base64 text, or None). Example::

            payload = json.dumps(image.to_dict())
            again = Image.from_dict(json.loads(payload))

        Args:
            include_data: whether ``base64`` carries the bytes. None (the default):
                only when they came with the result (``return_base64=True``), which
                costs no download; images with a URL are downloaded again by whoever
                reads them. True: always (reads, so downloads, the image if needed;
                base64 is a third larger than the file). False: never.

        Raises:
            RequestTimeoutError, ConnectionFailedError, DownloadError: with
                ``include_data=True``, the download failed.
        """
        if include_data is None:
            encoded = self._content.base64_text()
        elif include_data:
            encoded = self._content.base64_text()
            if encoded is None:
                encoded = base64.b64encode(self.read()).decode("ascii")
        else:
            encoded = None
        return {
            "uuid": self.uuid,
            "url": self.url,
            "task_uuid": self.task_uuid,
            "nsfw": self.nsfw,
            "cost": self.cost,
            "alt_text": self.alt_text,
            "base64": encoded,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Image:
        """Make an Image from the dict of :meth:`to_dict` (keys other than ``uuid`` optional).

        The image reads its bytes from ``base64`` when present, else downloads them
        from ``url`` (through the process's own downloader: no client is needed).
        Unknown keys are ignored.

        Raises:
            InvalidArgumentError: ``data`` is not a mapping, a value has the wrong
                type (the message names the key), or ``base64`` is not valid base64.
        """
        data = _mapping(data)
        encoded = _optional(data, "base64", str)
        content = _Content(None)
        if encoded is not None:
            try:
                decoded = base64.b64decode(encoded, validate=True)
            except binascii.Error as exc:
                raise InvalidArgumentError("data['base64']", f"not valid base64: {exc}") from exc
            content = _Content(None, data=decoded, inline=True)
        nsfw = _optional(data, "nsfw", bool)
        cost = _optional(data, "cost", (int, float))
        if isinstance(cost, bool):
            raise InvalidArgumentError("data['cost']", "must be a number or None, got bool")
        return cls(
            _required_uuid(data),
            url=_optional(data, "url", str),
            task_uuid=_optional(data, "task_uuid", str),
            nsfw=nsfw,
            cost=None if cost is None else float(cost),
            alt_text=_optional(data, "alt_text", str),
            _content=content,
        )

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

    def to_dict(self) -> dict[str, Any]:
        """Return a plain dict of JSON types (``uuid``, ``url``, ``task_uuid``)."""
        return {"uuid": self.uuid, "url": self.url, "task_uuid": self.task_uuid}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> UploadedImage:
        """Make an UploadedImage from the dict of :meth:`to_dict`; unknown keys are ignored.

        Raises:
            InvalidArgumentError: ``data`` is not a mapping or a value has the wrong type.
        """
        data = _mapping(data)
        return cls(
            _required_uuid(data),
            url=_optional(data, "url", str),
            task_uuid=_optional(data, "task_uuid", str),
        )


def _mapping(data: Any) -> Mapping[str, Any]:
    if not isinstance(data, Mapping):
        raise InvalidArgumentError("data", f"must be a dict, got {type(data).__name__}")
    return data


def _required_uuid(data: Mapping[str, Any]) -> str:
    value = data.get("uuid")
    if not isinstance(value, str) or not value:
        raise InvalidArgumentError("data['uuid']", f"must be a non-empty string, got {value!r}")
    return value


def _optional(data: Mapping[str, Any], key: str, kind: type | tuple[type, ...]) -> Any:
    value = data.get(key)
    if value is not None and not isinstance(value, kind):
        names = " or ".join(k.__name__ for k in (kind if isinstance(kind, tuple) else (kind,)))
        raise InvalidArgumentError(
            f"data[{key!r}]", f"must be {names} or None, got {type(value).__name__}"
        )
    return value


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
