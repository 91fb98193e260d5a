"""Running one validated task: producing its images or texts and its result frames.

A :class:`TaskRunner` coroutine runs on the emulator's event loop and hands each
result frame to an ``emit`` callback (the session's buffer); it never touches
connections. Pillow work goes to a worker thread through ``in_worker`` so the
loop never blocks on it. Result shapes follow protocol.md §3-§5 and
protocol-examples.json.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import random
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, Protocol, TypeVar

from diffusionmaster.testing import images
from diffusionmaster.testing.images import ImageRecord, ImageStore
from diffusionmaster.testing.messages import (
    CaptionRequest,
    EnhanceRequest,
    ErrorId,
    FrameError,
    GenerateRequest,
    PreprocessRequest,
    RemoveBackgroundRequest,
    TaskRequest,
    UploadRequest,
    UpscaleRequest,
)

__all__ = ["COST_PER_IMAGE", "Knobs", "TaskRunner", "Worker", "enhanced_prompts"]

logger = logging.getLogger("diffusionmaster.testing.tasks")

#: ``cost`` reported for each generated image.
COST_PER_IMAGE = 0.0013

_T = TypeVar("_T")
Emit = Callable[[dict[str, Any]], None]

_ENHANCEMENTS = (
    "highly detailed, sharp focus, dramatic lighting, trending on artstation",
    "intricate, elegant, digital painting, concept art, smooth",
    "cinematic, hyper realism, octane render, unreal engine, 8k, depth of field",
    "soft colours, volumetric light, matte painting, masterpiece",
    "award-winning photograph, golden hour, 35 mm, bokeh",
)


class Worker(Protocol):
    """Runs a blocking function in a worker thread and awaits its result."""

    def __call__(self, fn: Callable[[], _T]) -> Awaitable[_T]:
        """Run ``fn()`` off the event loop."""


class Knobs(Protocol):
    """The run-time settings a task reads each time it produces an item."""

    @property
    def latency(self) -> float:
        """Seconds before each image or text is produced."""

    @property
    def images_per_frame(self) -> int:
        """Items per result frame."""

    @property
    def image_bytes(self) -> int:
        """Generated image files are padded to this many bytes (0: not padded)."""


def positive_prompt(prompt: str) -> str:
    """Return the prompt without its ``-no <negative>`` part (the SDKs' convention)."""
    return prompt.split(" -no ", 1)[0].strip()


def enhanced_prompts(prompt: str, versions: int, max_length: int) -> list[str]:
    """Return ``versions`` distinct enhanced prompts of at most ``max_length`` characters.

    Distinctness matters: clients count the prompt enhancer's texts per task
    (house rule 5), so two equal texts would leave a task incomplete forever.
    """
    texts: list[str] = []
    for index in range(versions):
        base = f"{prompt}, {_ENHANCEMENTS[index % len(_ENHANCEMENTS)]}"[:max_length].rstrip(", ")
        tags = (f" v{index + 1}", f"#{index + 1}", str(index + 1))
        candidates = [base] + [base[: max_length - len(tag)] + tag for tag in tags]
        candidates += list("abcdefghijklmnopqrstuvwxyz")
        texts.append(next(t for t in candidates if t and len(t) <= max_length and t not in texts))
    return texts


class TaskRunner:
    """Runs validated tasks of one emulator (used on its event loop only)."""

    def __init__(
        self,
        store: ImageStore,
        knobs: Knobs,
        base_url: Callable[[], str],
        in_worker: Worker,
    ) -> None:
        self._store = store
        self._knobs = knobs
        self._base_url = base_url
        self._in_worker = in_worker

    async def run(self, request: TaskRequest, api_key: str, emit: Emit) -> None:
        """Run one task and emit its result frames (or one error frame).

        Args:
            request: the validated request.
            api_key: the key of the session; new images belong to it.
            emit: receives each frame to send, in order.
        """
        try:
            await self._dispatch(request, api_key, emit)
        except FrameError as exc:
            emit(exc.to_frame())
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bug in the emulator: report it rather than hang the client
            logger.exception("task %s failed", request.task_uuid)
            emit(FrameError(500, f"emulator error: {exc!r}", request.task_uuid).to_frame())

    async def _dispatch(self, request: TaskRequest, api_key: str, emit: Emit) -> None:
        if isinstance(request, GenerateRequest):
            await self._generate(request, api_key, emit)
        elif isinstance(request, UploadRequest):
            await self._upload(request, api_key, emit)
        elif isinstance(request, CaptionRequest):
            await self._pause()
            record = self._record(request.image_uuid)
            text = {"taskUUID": request.task_uuid, "text": record.caption}
            emit({"newReverseClip": {"texts": [text]}})
        elif isinstance(request, UpscaleRequest):
            source = self._record(request.image_uuid)
            width, height = source.size
            recipe = images.upscale_recipe(self._store, source.uuid, request.factor)
            size = (width * request.factor, height * request.factor)
            await self._single(request.task_uuid, "newUpscaleGan", source.ext, size, source.prompt,
                               recipe, api_key, emit)  # fmt: skip
        elif isinstance(request, RemoveBackgroundRequest):
            source = self._record(request.image_uuid)
            recipe = images.remove_background_recipe(self._store, source.uuid)
            await self._single(request.task_uuid, "newRemoveBackground", "png", source.size,
                               source.prompt, recipe, api_key, emit)  # fmt: skip
        elif isinstance(request, EnhanceRequest):
            await self._enhance(request, emit)
        else:
            await self._preprocess(request, api_key, emit)

    async def _pause(self) -> None:
        # Read at each item, so a test may change latency while tasks run.
        latency = self._knobs.latency
        await asyncio.sleep(latency if latency > 0 else 0)

    def _record(self, image_uuid: str) -> ImageRecord:
        record = self._store.get(image_uuid)
        assert record is not None  # validated before the task started; images are never removed
        return record

    def _new_image(
        self, api_key: str, ext: str, size: tuple[int, int], prompt: str | None,
        recipe: Callable[[], Any], pad_to: int = 0,
    ) -> tuple[ImageRecord, str]:  # fmt: skip
        record = ImageRecord(str(uuid.uuid4()), api_key, ext, size, prompt, recipe, pad_to)
        self._store.add(record)
        return record, f"{self._base_url()}/image/{record.uuid}.{ext}"

    async def _generate(self, request: GenerateRequest, api_key: str, emit: Emit) -> None:
        seed = request.seed if request.seed is not None else random.randint(1, 2**31 - 1)
        alt_text = positive_prompt(request.prompt)
        nsfw = request.check_nsfw and "nsfw" in request.prompt.lower()
        guides = tuple(i.guide_image_uuid for i in request.controlnet if i.guide_image_uuid)
        total = request.offset + request.number_results
        batch: list[dict[str, Any]] = []
        for index in range(request.number_results):
            await self._pause()
            recipe = images.generate_recipe(
                self._store, request.prompt, seed + index, request.size,
                request.init_image_uuid, request.mask_image_uuid, guides,
            )  # fmt: skip
            record, url = self._new_image(
                api_key, "jpg", request.size, alt_text, recipe, self._knobs.image_bytes
            )
            item: dict[str, Any] = {
                "imageSrc": url,
                "imageUUID": record.uuid,
                "taskUUID": request.task_uuid,
                "bNSFWContent": nsfw,
                "cost": COST_PER_IMAGE,
                "imageAltText": alt_text,
            }
            if request.return_base64:
                data = await self._in_worker(record.data)
                item["imageBase64Data"] = base64.b64encode(data).decode("ascii")
            batch.append(item)
            if len(batch) >= self._knobs.images_per_frame or index == request.number_results - 1:
                emit({"newImages": {"images": batch, "totalAvailableResults": total}})
                batch = []

    async def _upload(self, request: UploadRequest, api_key: str, emit: Emit) -> None:
        data = request.data
        try:
            _, size = await self._in_worker(lambda: images.inspect_upload(data))
        except ValueError as exc:
            raise FrameError(
                ErrorId.INVALID_IMAGE_DATA, f"imageBase64: {exc}", request.task_uuid
            ) from exc
        await self._pause()
        record, url = self._new_image(api_key, "png", size, None, images.upload_recipe(data))
        emit(
            {
                "newUploadedImageUUID": {
                    "newImageUUID": record.uuid,
                    "newImageSrc": url,
                    "taskUUID": request.task_uuid,
                }
            }
        )

    async def _single(
        self, task_uuid: str, key: str, ext: str, size: tuple[int, int], prompt: str | None,
        recipe: Callable[[], Any], api_key: str, emit: Emit,
    ) -> None:  # fmt: skip
        await self._pause()
        record, url = self._new_image(api_key, ext, size, prompt, recipe)
        item = {"imageSrc": url, "imageUUID": record.uuid, "taskUUID": task_uuid,
                "bNSFWContent": False}  # fmt: skip
        emit({key: {"images": [item]}})

    async def _enhance(self, request: EnhanceRequest, emit: Emit) -> None:
        texts = enhanced_prompts(request.prompt, request.versions, request.max_length)
        batch: list[dict[str, Any]] = []
        for index, text in enumerate(texts):
            await self._pause()
            batch.append({"taskUUID": request.task_uuid, "text": text})
            if len(batch) >= self._knobs.images_per_frame or index == len(texts) - 1:
                emit({"newPromptEnhancer": {"texts": batch}})
                batch = []

    async def _preprocess(self, request: PreprocessRequest, api_key: str, emit: Emit) -> None:
        guide = self._record(request.guide_image_uuid)
        size = images.preprocess_size(guide.size, request.width, request.height)
        recipe = images.preprocess_recipe(self._store, guide.uuid, request.kind, size)
        await self._pause()
        record, url = self._new_image(api_key, "png", size, None, recipe)
        emit(
            {
                "newPreProcessControlNet": {
                    "newImageSrc": url,
                    "newImageUUID": record.uuid,
                    "initImageUUID": guide.uuid,
                    "nNsfwContent": False,
                    "taskUUID": request.task_uuid,
                }
            }
        )
