"""The generation tasks' options (text-to-image, image-to-image, inpainting,
ControlNet): checking them and building their ``newTask``.

Pure but for reading local image inputs: :func:`prepare` checks every option and
reads the image inputs (raising :class:`~diffusionmaster.InvalidArgumentError`
before anything is sent); :func:`build_task` makes the request once the client
has the inputs' image UUIDs (uploading local ones).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypedDict

import attrs

from . import _inputs, _validate, protocol, tables
from .config import DEFAULT, DefaultType
from .errors import InvalidArgumentError
from .models import ControlNet, Image, Lora

__all__ = ["DEFAULTS", "Generation", "GenerationOptions", "build_task", "prepare"]


class GenerationOptions(TypedDict, total=False):
    """Keyword options of :meth:`Client.text2img`, :meth:`Client.img2img`,
    :meth:`Client.inpaint` and :meth:`Client.stream_images` (protocol §3).

    Any other keyword raises ``TypeError``.

    Attributes:
        negative_prompt: what to avoid; sent with the ``-no`` convention
            (``"<prompt> -no <negative_prompt>"``).
        number_results: how many images (>= 1; default 1).
        size: a :class:`~diffusionmaster.Size`, a ``sizeId``, ``(width, height)`` or
            ``"WIDTHxHEIGHT"`` from the size table, e.g. ``"512x768"`` (default 512x512).
        model: a :class:`~diffusionmaster.Model`, its id, its name (``"SDXL_V1_0"``),
            or an AIR string such as ``"civitai:4201@130072"`` (default
            ``Model.REV_ANIMATED_V1_2_2``).
        steps: inference steps (1 to 1000; server default 20).
        guidance: guidance scale, 0 to 10 (server default 7.5).
        seed: >= 1; each further image uses seed + 1. Random when absent.
        scheduler: a :class:`~diffusionmaster.Scheduler`, its id or its name
            (``"DPMPP_2M_KARRAS"``); absent: the model's own scheduler.
        style: a :class:`~diffusionmaster.Style`, its id or its name (``"ANIME"``).
        clip_skip: 0 to 2.
        language_id: the prompt's ``promptLanguageId`` (1 to 298, 1 is English);
            absent: detected by the server.
        use_cache: allow cached images made from similar settings.
        check_nsfw: run the NSFW check (reported in :attr:`Image.nsfw`).
        prompt_weighting: enable prompt weighting syntax.
        return_base64: deliver the image bytes inside the result, so that
            :meth:`Image.read` needs no download.
        lora: a list of :class:`~diffusionmaster.Lora`.
        controlnet: a list of :class:`~diffusionmaster.ControlNet` (taskType 9, or
            10 with an initial image).
        offset: result offset, to page through cached results (default 0).
        on_image: called with each :class:`Image` as it arrives, in the calling
            thread (never on a thread of the client); an exception it raises ends
            the call.
        timeout: seconds for the whole call (uploads included); default: the client's.
    """

    negative_prompt: str | None
    number_results: int
    size: tables.Size | int | tuple[int, int] | str
    model: tables.Model | int | str
    steps: int | None
    guidance: float | None
    seed: int | None
    scheduler: tables.Scheduler | int | str | None
    style: tables.Style | int | str | None
    clip_skip: int | None
    language_id: int | None
    use_cache: bool | None
    check_nsfw: bool | None
    prompt_weighting: bool | None
    return_base64: bool
    lora: Sequence[Lora] | None
    controlnet: Sequence[ControlNet] | None
    offset: int
    on_image: Callable[[Image], object] | None
    timeout: float | DefaultType | None


DEFAULTS: dict[str, Any] = {
    "negative_prompt": None, "number_results": 1, "size": tables.Size.W512_H512,
    "model": tables.Model.REV_ANIMATED_V1_2_2, "steps": None, "guidance": None, "seed": None,
    "scheduler": None, "style": None, "clip_skip": None, "language_id": None, "use_cache": None,
    "check_nsfw": None, "prompt_weighting": None, "return_base64": False, "lora": None,
    "controlnet": None, "offset": 0, "on_image": None, "timeout": DEFAULT,
}  # fmt: skip


@attrs.frozen
class Generation:
    """A checked generation request whose image inputs are read but not yet uploaded."""

    fields: dict[str, Any]  # the scalar ImageTask fields, validated
    controls: list[ControlNet]
    guide_urls: dict[int, str]  # controlnet index -> guideImageUrl
    inputs: dict[str, str | bytes]  # input name -> image UUID or local bytes
    timeout: float | DefaultType | None  # as given: the client turns it into a deadline
    on_image: Callable[[Image], object] | None


def prepare(prompt: str, image: object, mask: object, options: dict[str, Any]) -> Generation:
    """Check every argument and read the image inputs; nothing is sent."""
    unknown = set(options) - set(GenerationOptions.__annotations__)
    if unknown:
        allowed = ", ".join(GenerationOptions.__annotations__)
        raise TypeError(f"unexpected keyword argument(s) {sorted(unknown)}; allowed: {allowed}")
    if mask is not None and image is None:
        raise InvalidArgumentError("mask", "inpainting needs image= as well as mask=")
    o: dict[str, Any] = {**DEFAULTS, **options}
    on_image = o["on_image"]
    if on_image is not None and not callable(on_image):
        raise InvalidArgumentError("on_image", f"must be callable, got {on_image!r}")
    prompt_text = _validate.text("prompt", prompt)
    if o["negative_prompt"] is not None:
        prompt_text += " -no " + _validate.text("negative_prompt", o["negative_prompt"])
    opt, v = _validate.optional, _validate
    steps = opt(v.integer, "steps", o["steps"], 1, 1000)
    model_id = v.model("model", o["model"])
    fields = dict(
        prompt_text=prompt_text,
        number_results=v.integer("number_results", o["number_results"], 1),
        model_id=model_id,
        size_id=v.size("size", o["size"]),
        offset=v.integer("offset", o["offset"], 0),
        steps=steps,
        g_scale=opt(v.number, "guidance", o["guidance"], 0, 10),
        seed=opt(v.integer, "seed", o["seed"], 1),
        use_cache=opt(v.boolean, "use_cache", o["use_cache"]),
        scheduler_id=opt(v.table_id, "scheduler", o["scheduler"], tables.Scheduler),
        style_id=opt(v.table_id, "style", o["style"], tables.Style),
        clip_skip=opt(v.integer, "clip_skip", o["clip_skip"], 0, 2),
        prompt_language_id=opt(v.language, "language_id", o["language_id"]),
        check_nsfw=opt(v.boolean, "check_nsfw", o["check_nsfw"]),
        use_prompt_weighting=opt(v.boolean, "prompt_weighting", o["prompt_weighting"]),
        return_base64_image=v.boolean("return_base64", o["return_base64"]) or None,
        lora=[
            protocol.LoraItem(*v.lora(f"lora[{i}]", item))
            for i, item in enumerate(_sequence("lora", o["lora"]))
        ] or None,
    )  # fmt: skip
    controls = [
        v.controlnet(f"controlnet[{i}]", c, steps=steps, model_id=model_id)
        for i, c in enumerate(_sequence("controlnet", o["controlnet"]))
    ]
    guide_urls = {
        i: c.guide_image
        for i, c in enumerate(controls)
        if isinstance(c.guide_image, str) and c.guide_image.startswith(("http://", "https://"))
    }
    # Every scalar is valid: now read the image inputs (still nothing sent).
    inputs = _inputs.load_all(
        {"image": image, "mask": mask}
        | {
            f"controlnet[{i}].guide_image": c.guide_image
            for i, c in enumerate(controls)
            if i not in guide_urls
        }
    )
    return Generation(fields, controls, guide_urls, inputs, o["timeout"], on_image)


def _sequence(name: str, value: object) -> Sequence[Any]:
    if value is None:
        return ()
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise InvalidArgumentError(name, f"must be a list, got {value!r}")
    return value


def build_task(gen: Generation, uuids: Mapping[str, str], task_uuid: str) -> protocol.ImageTask:
    """The ``newTask`` of a prepared generation, once its inputs have image UUIDs.

    The taskType follows from the inputs (§3): 1 text-to-image, 2 image-to-image,
    3 inpainting, 9 and 10 ControlNet without and with an initial image.
    """
    control_items = [
        protocol.ControlNetItem(
            preprocessor=str(c.preprocessor),
            weight=c.weight,
            guide_image_uuid=uuids.get(f"controlnet[{i}].guide_image"),
            guide_image_url=gen.guide_urls.get(i),
            start_step=c.start_step,
            end_step=c.end_step,
            start_step_percentage=c.start_percentage,
            end_step_percentage=c.end_percentage,
            control_mode=c.control_mode,
            low_threshold_canny=c.low_threshold_canny,
            high_threshold_canny=c.high_threshold_canny,
        )
        for i, c in enumerate(gen.controls)
    ]  # fmt: skip
    image, mask = uuids.get("image"), uuids.get("mask")
    if control_items:
        task_type = tables.TaskType.CONTROLNET_IMAGE_TO_IMAGE if image is not None \
            else tables.TaskType.CONTROLNET_TEXT_TO_IMAGE  # fmt: skip
    elif mask is not None:
        task_type = tables.TaskType.INPAINTING
    elif image is not None:
        task_type = tables.TaskType.IMAGE_TO_IMAGE
    else:
        task_type = tables.TaskType.TEXT_TO_IMAGE
    return protocol.ImageTask(
        task_uuid=task_uuid,
        task_type=int(task_type),
        image_initiator_uuid=image,
        image_mask_initiator_uuid=mask,
        control_net=control_items or None,
        **gen.fields,
    )
