"""The emulator's images: deterministic Pillow rendering and a lazy image store.

Nothing is rendered when a task completes: each :class:`ImageRecord` holds a
recipe (a function returning a Pillow image) and its final size, and the file
bytes are made on first use (an HTTP GET of ``imageSrc``, a ``returnBase64Image``
request, or an image derived from this one), then cached. Thousands of tasks
therefore cost almost nothing until their images are fetched.

Formats: generated images are JPEG (``.jpg``); uploads are stored as PNG,
downscaled to at most 2048 px on the long side; upscaled images keep the
source's format; background removal and ControlNet preprocessing give PNG.

Thread safety: :class:`ImageStore` may be used from any thread. Records are
added and looked up under one lock; rendering holds only the record's own lock,
so two images render in parallel and one image renders once.
"""

from __future__ import annotations

import hashlib
import io
import logging
import random
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from PIL import Image, ImageDraw, ImageFilter, ImageOps

__all__ = [
    "CONTENT_TYPES",
    "MAX_UPLOAD_SIDE",
    "ImageRecord",
    "ImageStore",
    "render_generated",
]

logger = logging.getLogger("diffusionmaster.testing.images")

#: File extension -> HTTP Content-Type.
CONTENT_TYPES = {"jpg": "image/jpeg", "png": "image/png"}
#: Uploads are downscaled so that their long side is at most this many pixels (§4).
MAX_UPLOAD_SIDE = 2048
_UPLOAD_FORMATS = {"PNG", "JPEG", "WEBP"}


@dataclass
class ImageRecord:
    """One image known to the server.

    Attributes:
        uuid: the image UUID (also its file name).
        api_key: the key whose sessions may reference it.
        ext: ``"jpg"`` or ``"png"``.
        size: (width, height) of the file, known before rendering.
        prompt: the prompt it was generated from (kept by derived images), or None.
        recipe: makes the picture; called at most once.
        pad_to: the file is padded with zero bytes after its end to this many bytes
            (benchmarks of large results; decoders ignore trailing bytes); 0: never.
    """

    uuid: str
    api_key: str
    ext: str
    size: tuple[int, int]
    prompt: str | None
    recipe: Callable[[], Image.Image]
    pad_to: int = 0
    _data: bytes | None = field(default=None, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def caption(self) -> str:
        """What image-to-text answers: the prompt, else a description of the size."""
        if self.prompt:
            return self.prompt
        return f"an image of {self.size[0]}x{self.size[1]} pixels"

    @property
    def content_type(self) -> str:
        """The HTTP Content-Type of the file."""
        return CONTENT_TYPES[self.ext]

    def data(self) -> bytes:
        """Return the encoded file, rendering it on first use (thread-safe)."""
        with self._lock:
            if self._data is None:
                image = self.recipe()
                if image.size != self.size:  # a recipe bug; the size was announced already
                    image = image.resize(self.size)
                data = _encode(image, self.ext)
                if len(data) < self.pad_to:
                    data += bytes(self.pad_to - len(data))
                self._data = data
            return self._data


class ImageStore:
    """All images of one emulator, keyed by UUID (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._records: dict[str, ImageRecord] = {}

    def add(self, record: ImageRecord) -> None:
        """Register an image."""
        with self._lock:
            self._records[record.uuid] = record

    def get(self, image_uuid: str) -> ImageRecord | None:
        """Return the record of an image, or None when unknown."""
        with self._lock:
            return self._records.get(image_uuid.lower())

    def exists(self, image_uuid: str, api_key: str) -> bool:
        """Tell whether a session of ``api_key`` may reference the image."""
        record = self.get(image_uuid)
        return record is not None and record.api_key == api_key

    def load(self, image_uuid: str) -> Image.Image:
        """Decode an image (rendering it first when needed), for a derived recipe."""
        record = self.get(image_uuid)
        if record is None:  # validated before the task ran; images are never removed
            raise KeyError(image_uuid)
        image = Image.open(io.BytesIO(record.data()))
        image.load()
        return image

    def __len__(self) -> int:
        with self._lock:
            return len(self._records)


def _encode(image: Image.Image, ext: str) -> bytes:
    buffer = io.BytesIO()
    if ext == "jpg":
        image.convert("RGB").save(buffer, "JPEG", quality=85)
    else:
        image.save(buffer, "PNG", compress_level=1)  # speed over size: files stay local
    return buffer.getvalue()


def _palette(*parts: object) -> bytes:
    text = "\0".join(str(part) for part in parts)
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).digest()


def render_generated(prompt: str, seed: int, size: tuple[int, int]) -> Image.Image:
    """Render the deterministic picture of ``prompt`` and ``seed`` at ``size``.

    A two-colour gradient with a few shapes, all chosen from a hash of the
    prompt and seed: the same inputs always give the same pixels.
    """
    digest = _palette(prompt, seed)
    width, height = size
    gradient = Image.linear_gradient("L").resize(size)
    if digest[15] % 2:
        gradient = gradient.transpose(Image.Transpose.ROTATE_90).resize(size)
    image = Image.composite(
        Image.new("RGB", size, tuple(digest[0:3])), Image.new("RGB", size, tuple(digest[3:6])),
        gradient,
    )  # fmt: skip
    draw = ImageDraw.Draw(image)
    rng = random.Random(digest)
    for _ in range(3 + digest[16] % 4):
        x0, y0 = rng.randrange(width), rng.randrange(height)
        x1 = min(width, x0 + rng.randrange(width // 8, width // 2))
        y1 = min(height, y0 + rng.randrange(height // 8, height // 2))
        colour = (rng.randrange(256), rng.randrange(256), rng.randrange(256))
        if rng.random() < 0.5:
            draw.ellipse((x0, y0, x1, y1), fill=colour)
        else:
            draw.rectangle((x0, y0, x1, y1), fill=colour)
    return image


def inspect_upload(data: bytes) -> tuple[str, tuple[int, int]]:
    """Decode an uploaded file fully and return its format and stored size.

    Args:
        data: the file bytes (base64 already decoded).

    Returns:
        ``(format, (width, height))``: the Pillow format name and the size it
        is stored at (downscaled to :data:`MAX_UPLOAD_SIDE`).

    Raises:
        ValueError: not a complete PNG, JPEG or WEBP image.
    """
    try:
        with Image.open(io.BytesIO(data)) as image:
            kind = image.format or "?"
            if kind not in _UPLOAD_FORMATS:
                raise ValueError(f"{kind} images are not accepted (PNG, JPEG or WEBP)")
            image.load()  # a truncated or corrupt file fails here, not at first GET
            return kind, _bounded(image.size)
    except ValueError:
        raise
    except Exception as exc:  # Pillow raises many types for bad data
        raise ValueError(f"not a readable image ({type(exc).__name__})") from exc


def _bounded(size: tuple[int, int]) -> tuple[int, int]:
    width, height = size
    scale = min(1.0, MAX_UPLOAD_SIDE / max(width, height))
    return max(1, round(width * scale)), max(1, round(height * scale))


def upload_recipe(data: bytes) -> Callable[[], Image.Image]:
    """Return the recipe of an uploaded file: decoded, mode-normalised, downscaled."""

    def recipe() -> Image.Image:
        with Image.open(io.BytesIO(data)) as source:
            image: Image.Image = source.convert("RGBA" if _has_alpha(source) else "RGB")
        target = _bounded(image.size)
        if target != image.size:
            image = image.resize(target, Image.Resampling.LANCZOS, reducing_gap=2.0)
        return image

    return recipe


def _has_alpha(image: Image.Image) -> bool:
    return image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info


def generate_recipe(
    store: ImageStore,
    prompt: str,
    seed: int,
    size: tuple[int, int],
    init_uuid: str | None = None,
    mask_uuid: str | None = None,
    guide_uuids: tuple[str, ...] = (),
) -> Callable[[], Image.Image]:
    """Return the recipe of a generated image.

    Image-to-image blends the init image (resized to ``size``) with the
    generated picture; inpainting paints the picture where the mask is light;
    ControlNet overlays the edges of each guide image.
    """

    def recipe() -> Image.Image:
        image = render_generated(prompt, seed, size)
        if init_uuid is not None:
            init = store.load(init_uuid).convert("RGB").resize(size)
            if mask_uuid is not None:
                mask = store.load(mask_uuid).convert("L").resize(size)
                image = Image.composite(image, init, mask)
            else:
                image = Image.blend(init, image, 0.5)
        for guide_uuid in guide_uuids:
            edges = store.load(guide_uuid).convert("L").resize(size).filter(ImageFilter.FIND_EDGES)
            image.paste((255, 255, 255), mask=edges)
        return image

    return recipe


def upscale_recipe(store: ImageStore, source_uuid: str, factor: int) -> Callable[[], Image.Image]:
    """Return the recipe of the source image resized by ``factor``."""

    def recipe() -> Image.Image:
        source = store.load(source_uuid)
        return source.resize(
            (source.width * factor, source.height * factor), Image.Resampling.BICUBIC
        )

    return recipe


def remove_background_recipe(store: ImageStore, source_uuid: str) -> Callable[[], Image.Image]:
    """Return the recipe of an RGBA cut-out: an opaque ellipse, transparent corners and border."""

    def recipe() -> Image.Image:
        image = store.load(source_uuid).convert("RGBA")
        alpha = Image.new("L", image.size, 0)
        width, height = image.size
        ImageDraw.Draw(alpha).ellipse(
            (width // 8, height // 8, width - 1 - width // 8, height - 1 - height // 8), fill=255
        )
        image.putalpha(alpha)
        return image

    return recipe


# preProcessorType -> the filter standing in for the real annotator.
_PREPROCESS_FILTERS: dict[str, Callable[[Image.Image], Image.Image]] = {
    "canny": lambda im: im.convert("L").filter(ImageFilter.FIND_EDGES),
    "depth": lambda im: im.convert("L").filter(ImageFilter.GaussianBlur(8)),
    "mlsd": lambda im: im.convert("L").filter(ImageFilter.FIND_EDGES).point(lambda v: 255 * (v > 64)),
    "normalbae": lambda im: im.convert("RGB").filter(ImageFilter.EMBOSS),
    "openpose": lambda im: im.convert("L").filter(ImageFilter.CONTOUR),
    "tile": lambda im: im.convert("RGB").filter(ImageFilter.BoxBlur(4)),
    "seg": lambda im: ImageOps.posterize(im.convert("RGB"), 2),
    "lineart": lambda im: ImageOps.invert(im.convert("L").filter(ImageFilter.FIND_EDGES)),
    "lineart_anime": lambda im: ImageOps.invert(im.convert("L").filter(ImageFilter.CONTOUR)),
    "shuffle": lambda im: im.convert("RGB").transpose(Image.Transpose.ROTATE_180),
    "scribble": lambda im: im.convert("L").filter(ImageFilter.CONTOUR).point(lambda v: 255 * (v > 128)),
    "softedge": lambda im: im.convert("L").filter(ImageFilter.FIND_EDGES).filter(ImageFilter.SMOOTH),
}  # fmt: skip


def preprocess_size(guide: tuple[int, int], width: int, height: int) -> tuple[int, int]:
    """Output size of a preprocess task: the guide's, or width/height (0 = keep aspect)."""
    if width and height:
        return width, height
    if width:
        return width, max(1, round(guide[1] * width / guide[0]))
    if height:
        return max(1, round(guide[0] * height / guide[1])), height
    return guide


def preprocess_recipe(
    store: ImageStore, guide_uuid: str, kind: str, size: tuple[int, int]
) -> Callable[[], Image.Image]:
    """Return the recipe of a ControlNet preprocess: a filter of the guide image."""

    def recipe() -> Image.Image:
        guide = store.load(guide_uuid).convert("RGB")
        if guide.size != size:
            guide = guide.resize(size, Image.Resampling.BICUBIC)
        return _PREPROCESS_FILTERS[kind](guide)

    return recipe
