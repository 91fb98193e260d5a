"""One small spec per task: checked inputs, how to build the request, when it is
complete, and how its items become the public result.

Each function here has the signature of the :class:`~diffusionmaster.Client`
method of the same name, checks every argument (raising
:class:`~diffusionmaster.InvalidArgumentError` before anything is sent), reads
local image inputs, and returns a :class:`TaskSpec`. The client then runs every
spec through one funnel: upload the local inputs (once per content), build the
request with their UUIDs, send it, and wait for ``expected`` distinct items.

Pure but for reading local image files.
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import attrs

from . import _inputs, _validate, generation, protocol, tables
from ._http import Downloader
from .config import DEFAULT, DefaultType
from .errors import InvalidArgumentError
from .models import Image, UploadedImage, image_format

if TYPE_CHECKING:
    from typing_extensions import Unpack

    from .generation import GenerationOptions

__all__ = ["SPECS", "TaskSpec"]

R = TypeVar("R")
Timeout = float | None | DefaultType
#: (image UUIDs of the inputs by name, the new task UUID) -> the request to send
Builder = Callable[[Mapping[str, str], str], Any]


@attrs.frozen
class TaskSpec(Generic[R]):
    """A checked task, ready to run once its local inputs are uploaded.

    Attributes:
        kind: the task's name, for logs ("text2img", "upscale", ...).
        inputs: image inputs by name: an image UUID, or local bytes to upload.
        build: makes the request from the inputs' UUIDs and the task UUID.
        expected: how many distinct items complete the task.
        item: turns one raw protocol item into what the caller sees.
        adapt: turns the list of those into the call's result.
        timeout: as the caller gave it (DEFAULT: the client's).
        on_item: called with each converted item in the caller's thread, as it arrives.
        ready: the result when nothing needs sending (``upload_image`` of a UUID).
    """

    kind: str
    inputs: Mapping[str, str | bytes]
    build: Builder
    expected: int
    item: Callable[[Any], Any]
    adapt: Callable[[list[Any]], R]
    timeout: Timeout = DEFAULT
    on_item: Callable[[Any], object] | None = None
    ready: Any = attrs.field(default=None, repr=False)
    #: True when ``ready`` is the result and nothing is to be sent
    is_ready: bool = False
    #: local bytes this task uploads, through the client's upload cache
    upload: bytes | None = None


def image_of(item: Any, downloader: Downloader | None = None) -> Image:
    """The public :class:`Image` of an image item (or a ControlNet preprocess reply)."""
    if isinstance(item, protocol.PreprocessResult):
        return Image._from_result(
            uuid=item.new_image_uuid, url=item.new_image_src, task_uuid=item.task_uuid,
            nsfw=item.nsfw, downloader=downloader,
        )  # fmt: skip
    return Image._from_result(
        uuid=item.image_uuid,
        url=item.image_src,
        task_uuid=item.task_uuid,
        nsfw=item.nsfw,
        cost=item.cost,
        alt_text=item.image_alt_text,
        base64_data=item.image_base64_data,
        downloader=downloader,
    )


def _text_of(item: Any) -> str:
    text: str = item.text
    return text


def _uploaded(item: Any) -> UploadedImage:
    return UploadedImage(item.new_image_uuid, item.new_image_src, item.task_uuid)


def _first(items: list[Any]) -> Any:
    return items[0]


def _required(name: str, image: object) -> dict[str, str | bytes]:
    if image is None:
        raise InvalidArgumentError(
            name, "an image is required (a path, bytes, a file, a PIL image, an image UUID "
            "or an earlier result), got None",
        )  # fmt: skip
    return _inputs.load_all({name: image})


def _one_image(kind: str, image: object, timeout: Timeout, build: Builder) -> TaskSpec[Image]:
    return TaskSpec(kind, _required("image", image), build, 1, image_of, _first, timeout)


# -- generation -----------------------------------------------------------------------


def _generation(
    kind: str, prompt: str, image: object, mask: object, options: dict[str, Any]
) -> TaskSpec[list[Image]]:
    gen = generation.prepare(prompt, image, mask, options)

    def build(uuids: Mapping[str, str], task_uuid: str) -> protocol.ImageTask:
        return generation.build_task(gen, uuids, task_uuid)

    return TaskSpec(
        kind, gen.inputs, build, gen.fields["number_results"], image_of, list,
        gen.timeout, gen.on_image,
    )  # fmt: skip


def text2img(prompt: str, **options: Unpack[GenerationOptions]) -> TaskSpec[list[Image]]:
    """The spec of :meth:`Client.text2img`."""
    return _generation("text2img", prompt, None, None, dict(options))


def stream_images(
    prompt: str,
    *,
    image: object = None,
    mask: object = None,
    **options: Unpack[GenerationOptions],
) -> TaskSpec[list[Image]]:
    """The spec of :meth:`Client.stream_images`."""
    kind = "inpaint" if mask is not None else "img2img" if image is not None else "text2img"
    return _generation(kind, prompt, image, mask, dict(options))


def img2img(
    prompt: str, image: object, **options: Unpack[GenerationOptions]
) -> TaskSpec[list[Image]]:
    """The spec of :meth:`Client.img2img`."""
    if image is None:
        raise InvalidArgumentError("image", "img2img needs an image")
    return _generation("img2img", prompt, image, None, dict(options))


def inpaint(
    prompt: str, image: object, mask: object, **options: Unpack[GenerationOptions]
) -> TaskSpec[list[Image]]:
    """The spec of :meth:`Client.inpaint`."""
    if image is None or mask is None:
        raise InvalidArgumentError("image" if image is None else "mask", "inpaint needs both")
    return _generation("inpaint", prompt, image, mask, dict(options))


# -- the other tasks --------------------------------------------------------------------


def upload_image(image: object, *, timeout: Timeout = DEFAULT) -> TaskSpec[UploadedImage]:
    """The spec of :meth:`Client.upload_image`; ``ready`` for inputs already on the server."""
    loaded = _required("image", image)["image"]
    if isinstance(image, UploadedImage):
        ready: UploadedImage | None = image
    elif isinstance(loaded, str):
        ready = UploadedImage(loaded, image.url if isinstance(image, Image) else None)
    else:
        ready = None
    # The client uploads local bytes through its cache; build is never called then.
    return TaskSpec(
        "upload",
        {},
        _no_build,
        1,
        _uploaded,
        _first,
        timeout,
        ready=ready,
        is_ready=ready is not None,
        upload=loaded if isinstance(loaded, bytes) else None,
    )


def _no_build(uuids: Mapping[str, str], task_uuid: str) -> Any:  # pragma: no cover
    raise AssertionError("an upload is sent by the client's upload cache")


def upload_request(data: bytes, task_uuid: str) -> protocol.ImageUpload:
    """The ``newImageUpload`` request for local image bytes."""
    kind = image_format(data) or "png"
    uri = f"data:image/{kind};base64," + base64.b64encode(data).decode("ascii")
    return protocol.ImageUpload(task_uuid=task_uuid, image_base64=uri)


def uploaded(item: Any) -> UploadedImage:
    """The public :class:`UploadedImage` of an upload reply."""
    return _uploaded(item)


def first(items: list[Any]) -> Any:
    """The one result of a single-item task."""
    return items[0]


def upscale(image: object, factor: int = 2, *, timeout: Timeout = DEFAULT) -> TaskSpec[Image]:
    """The spec of :meth:`Client.upscale`."""
    upscale_factor = _validate.integer("factor", factor, 2, 4)
    return _one_image(
        "upscale", image, timeout,
        lambda uuids, task_uuid: protocol.UpscaleGan(task_uuid, uuids["image"], upscale_factor),
    )  # fmt: skip


def remove_background(image: object, *, timeout: Timeout = DEFAULT) -> TaskSpec[Image]:
    """The spec of :meth:`Client.remove_background`."""
    return _one_image(
        "remove_background", image, timeout,
        lambda uuids, task_uuid: protocol.RemoveBackground(task_uuid, uuids["image"]),
    )  # fmt: skip


def image2text(image: object, *, timeout: Timeout = DEFAULT) -> TaskSpec[str]:
    """The spec of :meth:`Client.image2text`."""
    return TaskSpec(
        "image2text", _required("image", image),
        lambda uuids, task_uuid: protocol.ReverseImageClip(task_uuid, uuids["image"]),
        1, _text_of, _first, timeout,
    )  # fmt: skip


def enhance_prompt(
    prompt: str,
    *,
    versions: int = 1,
    max_length: int = 380,
    language_id: int | None = 1,
    timeout: Timeout = DEFAULT,
) -> TaskSpec[list[str]]:
    """The spec of :meth:`Client.enhance_prompt`."""
    text = _validate.text("prompt", prompt)
    length = _validate.integer("max_length", max_length, 1, 380)
    count = _validate.integer("versions", versions, 1, 5)
    language = _validate.optional(_validate.language, "language_id", language_id)
    return TaskSpec(
        "enhance_prompt", {},
        lambda uuids, task_uuid: protocol.PromptEnhance(
            task_uuid=task_uuid, prompt=text, prompt_max_length=length,
            prompt_versions=count, prompt_language_id=language,
        ),
        count, _text_of, list, timeout,
    )  # fmt: skip


def preprocess_controlnet(
    image: object,
    preprocessor: str,
    *,
    width: int | None = None,
    height: int | None = None,
    low_threshold_canny: int | None = None,
    high_threshold_canny: int | None = None,
    include_hands_and_face: bool | None = None,
    mask: object = None,
    timeout: Timeout = DEFAULT,
) -> TaskSpec[Image]:
    """The spec of :meth:`Client.preprocess_controlnet`."""
    opt, v = _validate.optional, _validate
    kind = v.choice("preprocessor", preprocessor, tables.PREPROCESSOR_TYPES)
    size = {name: opt(v.integer, name, value, 1, 2048) for name, value in
            (("width", width), ("height", height))}  # fmt: skip
    low = opt(v.integer, "low_threshold_canny", low_threshold_canny, 0, 255)
    high = opt(v.integer, "high_threshold_canny", high_threshold_canny, 0, 255)
    if low is not None and high is not None and low > high:
        raise InvalidArgumentError(
            "low_threshold_canny", f"{low} is above high_threshold_canny {high}"
        )
    hands = opt(v.boolean, "include_hands_and_face", include_hands_and_face)

    def build(uuids: Mapping[str, str], task_uuid: str) -> protocol.PreprocessControlNet:
        return protocol.PreprocessControlNet(
            task_uuid=task_uuid,
            pre_processor_type=kind,
            guide_image_uuid=uuids["image"],
            width=size["width"],
            height=size["height"],
            low_threshold_canny=low,
            high_threshold_canny=high,
            include_hands_and_face_open_pose=hands,
            guide_image_mask_uuid=uuids.get("mask"),
        )

    inputs = {**_required("image", image), **_inputs.load_all({"mask": mask})}
    return TaskSpec("preprocess_controlnet", inputs, build, 1, image_of, _first, timeout)


#: The client's task methods by name, as spec functions of the same signature.
SPECS: Mapping[str, Callable[..., TaskSpec[Any]]] = {
    "enhance_prompt": enhance_prompt,
    "image2text": image2text,
    "img2img": img2img,
    "inpaint": inpaint,
    "preprocess_controlnet": preprocess_controlnet,
    "remove_background": remove_background,
    "text2img": text2img,
    "upload_image": upload_image,
    "upscale": upscale,
}
