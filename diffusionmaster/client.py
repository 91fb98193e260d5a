"""The public blocking client.

Every method validates its arguments first (raising
:class:`~diffusionmaster.InvalidArgumentError` before anything is sent), uploads
local image inputs, sends one task and blocks until that task's results arrive
or its timeout passes. A :class:`Client` is thread-safe: share one per process.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import os
import queue
import threading
import uuid
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, TypedDict, TypeVar

from . import _inputs, _validate, protocol, tables
from .config import DEFAULT, Deadline, DefaultType, Heartbeat, Reconnect
from .errors import InvalidArgumentError, ProtocolError, RequestTimeoutError
from .models import ControlNet, Image, Lora, UploadedImage, image_format
from .supervisor import Pending, State, StateListener, Supervisor

if TYPE_CHECKING:
    from typing_extensions import Unpack

logger = logging.getLogger("diffusionmaster.client")

__all__ = ["ENDPOINTS", "Client"]

#: The server endpoints by environment (protocol §1).
ENDPOINTS = {
    "production": "wss://ws-api.diffusionmaster.com/v1/",
    "development": "wss://dev-ws-api.diffusionmaster.com/v1/",
}
API_KEY_VARIABLE = "DIFFUSIONMASTER_API_KEY"

Timeout = float | None | DefaultType
T = TypeVar("T")


def _new_uuid() -> str:
    return str(uuid.uuid4())


def _image(item: protocol.ImageItem) -> Image:
    return Image._from_result(
        uuid=item.image_uuid,
        url=item.image_src,
        task_uuid=item.task_uuid,
        nsfw=item.nsfw,
        cost=item.cost,
        alt_text=item.image_alt_text,
        base64_data=item.image_base64_data,
    )


def _item_key(item: Any) -> str:
    """The identity of a result item, for dropping repeats (house rule 5)."""
    if isinstance(item, protocol.ImageItem):
        return item.image_uuid
    if isinstance(item, protocol.TextItem):
        return item.text
    if isinstance(item, protocol.UploadResult):
        return item.new_image_uuid
    if isinstance(item, protocol.PreprocessResult):
        return item.new_image_uuid
    raise ProtocolError(f"unexpected result {type(item).__name__}")  # pragma: no cover


class GenerationOptions(TypedDict, total=False):
    """Keyword options of :meth:`Client.text2img`, :meth:`Client.img2img`,
    :meth:`Client.inpaint` and :meth:`Client.stream_images` (protocol §3).

    Attributes:
        negative_prompt: what to avoid; sent with the ``-no`` convention
            (``"<prompt> -no <negative_prompt>"``).
        number_results: how many images (>= 1; default 1).
        size: a :class:`~diffusionmaster.Size`, a ``sizeId``, or ``(width, height)``
            from the size table (default 512x512).
        model: a :class:`~diffusionmaster.Model`, its id, or an AIR string such as
            ``"civitai:4201@130072"`` (default ``Model.REV_ANIMATED_V1_2_2``).
        steps: inference steps (1 to 1000; server default 20).
        guidance: guidance scale, 0 to 10 (server default 7.5).
        seed: >= 1; each further image uses seed + 1. Random when absent.
        scheduler: a :class:`~diffusionmaster.Scheduler` or its id.
        style: a :class:`~diffusionmaster.Style` or its id.
        clip_skip: 0 to 2.
        language: the prompt's ``promptLanguageId`` (1 to 298); absent: detected.
        use_cache: allow cached images made from similar settings.
        check_nsfw: run the NSFW check (reported in :attr:`Image.nsfw`).
        prompt_weighting: enable prompt weighting syntax.
        return_base64: deliver the image bytes inside the result, so that
            :meth:`Image.read` needs no download.
        lora: a list of :class:`~diffusionmaster.Lora`.
        controlnet: a list of :class:`~diffusionmaster.ControlNet`.
        offset: result offset, to page through cached results (default 0).
        on_image: called with each :class:`Image` as it arrives, in the calling thread.
        timeout: seconds for the whole call (uploads included); default: the client's.
    """

    negative_prompt: str | None
    number_results: int
    size: tables.Size | int | tuple[int, int]
    model: tables.Model | int | str
    steps: int | None
    guidance: float | None
    seed: int | None
    scheduler: tables.Scheduler | int | None
    style: tables.Style | int | None
    clip_skip: int | None
    language: int | None
    use_cache: bool | None
    check_nsfw: bool | None
    prompt_weighting: bool | None
    return_base64: bool
    lora: Sequence[Lora] | None
    controlnet: Sequence[ControlNet] | None
    offset: int
    on_image: Callable[[Image], object] | None
    timeout: float | DefaultType | None


_GENERATION_DEFAULTS: dict[str, Any] = {
    "negative_prompt": None, "number_results": 1, "size": tables.Size.W512_H512,
    "model": tables.Model.REV_ANIMATED_V1_2_2, "steps": None, "guidance": None, "seed": None,
    "scheduler": None, "style": None, "clip_skip": None, "language": None, "use_cache": None,
    "check_nsfw": None, "prompt_weighting": None, "return_base64": False, "lora": None,
    "controlnet": None, "offset": 0, "on_image": None, "timeout": DEFAULT,
}  # fmt: skip


class Client:
    """A blocking, thread-safe client of the DiffusionMaster WebSocket API.

    Creating a client connects and authenticates; use it as a context manager or
    call :meth:`close`. One client holds one WebSocket, shared by all threads;
    every call receives only its own results. When the connection drops, the
    client reconnects and resumes its session so that waiting calls still get
    their results (see :class:`~diffusionmaster.Reconnect`).

    Args:
        api_key: the API key; defaults to the ``DIFFUSIONMASTER_API_KEY`` variable.
        url: the WebSocket URL; overrides ``environment``.
        environment: ``"production"`` or ``"development"`` (protocol §1).
        timeout: the default deadline of each call, in seconds (None: no limit).
        connect_timeout: the deadline of each connection attempt (TCP, WebSocket
            handshake and authentication).
        reconnect: the reconnect policy.
        heartbeat: the heartbeat policy.
        http_proxy_host, http_proxy_port: an HTTP proxy for the WebSocket.

    Raises:
        InvalidArgumentError: no API key, or an unknown environment.
        AuthenticationError: the server refused the key.
        ConnectionFailedError: the server could not be reached.
    """

    def __init__(
        self,
        api_key: str | None = None,
        *,
        url: str | None = None,
        environment: str = "production",
        timeout: float | None = 120.0,
        connect_timeout: float | None = 10.0,
        reconnect: Reconnect | None = None,
        heartbeat: Heartbeat | None = None,
        http_proxy_host: str | None = None,
        http_proxy_port: int | None = None,
    ) -> None:
        if api_key is None:
            api_key = os.environ.get(API_KEY_VARIABLE)
        if not api_key:
            raise InvalidArgumentError(
                "api_key", f"no API key: pass api_key= or set the {API_KEY_VARIABLE} variable"
            )
        if url is None:
            url = ENDPOINTS.get(environment)
            if url is None:
                raise InvalidArgumentError(
                    "environment", f"must be one of {', '.join(ENDPOINTS)}; got {environment!r}"
                )
        self.url = url
        self.timeout = timeout
        self._uploads: dict[str, str] = {}  # sha256 of the bytes -> uploaded image UUID
        self._uploads_lock = threading.Lock()
        self._executor: ThreadPoolExecutor | None = None
        options: dict[str, Any] = {}
        if http_proxy_host:
            options.update(http_proxy_host=http_proxy_host, http_proxy_port=http_proxy_port)
        self._supervisor = Supervisor(
            url=url,
            api_key=api_key,
            connect_timeout=connect_timeout,
            reconnect=reconnect or Reconnect(),
            heartbeat=heartbeat or Heartbeat(),
            transport_options=options,
        )
        self._supervisor.start()

    # -- lifecycle ---------------------------------------------------------------

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<Client {self.url} {self.state.value} session={self.session_uuid}>"

    def close(self) -> None:
        """Close the connection and stop the client's threads. Idempotent and fast.

        Calls still waiting raise :class:`~diffusionmaster.ClientClosedError` at once.
        """
        self._supervisor.close()
        with self._uploads_lock:
            executor, self._executor = self._executor, None
        if executor is not None:
            # The workers' calls were just woken by the close; don't wait for them here.
            executor.shutdown(wait=False, cancel_futures=True)

    @property
    def state(self) -> State:
        """The connection state: connecting, connected, reconnecting, closed or failed."""
        return self._supervisor.state

    @property
    def session_uuid(self) -> str | None:
        """The server's session UUID (``connectionSessionUUID``)."""
        return self._supervisor.session_uuid

    def add_state_listener(self, listener: StateListener) -> None:
        """Call ``listener(state)`` on every state change.

        Listeners run on a thread of the client (``diffusionmaster-events``), in order,
        never on the reader thread; they must not block for long, and a blocking
        client call made from one raises :class:`~diffusionmaster.ReentrancyError`.
        """
        self._supervisor.add_listener(listener)

    def remove_state_listener(self, listener: StateListener) -> None:
        """Stop calling ``listener``."""
        self._supervisor.remove_listener(listener)

    # -- machinery ---------------------------------------------------------------

    def _deadline(self, timeout: Timeout) -> Deadline:
        if timeout is DEFAULT:
            return Deadline(self.timeout)
        if timeout is not None and (
            isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout < 0
        ):
            raise InvalidArgumentError("timeout", f"must be seconds >= 0 or None, got {timeout!r}")
        return Deadline(timeout)

    def _results(self, request: Any, expected: int, deadline: Deadline) -> Iterator[Any]:
        """Send ``request`` and yield its distinct result items until ``expected`` arrived."""
        task_uuid: str = request.task_uuid
        pending = Pending(task_uuid, protocol.encode(request))
        supervisor = self._supervisor
        supervisor.submit(pending, deadline)
        try:
            seen: set[str] = set()
            while len(seen) < expected:
                try:
                    item = pending.queue.get(timeout=deadline.remaining())
                except queue.Empty:
                    raise RequestTimeoutError(
                        f"task {task_uuid}: {len(seen)} of {expected} results arrived "
                        f"before the timeout",
                        task_uuid=task_uuid,
                    ) from None
                if isinstance(item, BaseException):
                    raise item
                key = _item_key(item)
                if key in seen:
                    continue  # a repeated frame (house rule 5)
                seen.add(key)
                yield item
        finally:
            supervisor.forget(pending)

    def _image_uuids(self, images: dict[str, object], deadline: Deadline) -> dict[str, str]:
        """The UUIDs of image inputs (None values skipped), uploading local data once per
        distinct content. Every input is read and checked before any is uploaded, so a
        bad second input does not leave the first one uploaded for nothing."""
        loaded = {name: _inputs.load(name, img) for name, img in images.items() if img is not None}
        return {
            name: value if isinstance(value, str) else self._upload(value, deadline).uuid
            for name, value in loaded.items()
        }

    def _upload(self, data: bytes, deadline: Deadline) -> UploadedImage:
        digest = hashlib.sha256(data).hexdigest()
        with self._uploads_lock:
            known = self._uploads.get(digest)
        if known is not None:
            return UploadedImage(known)
        kind = image_format(data) or "png"
        request = protocol.ImageUpload(
            task_uuid=_new_uuid(),
            image_base64=f"data:image/{kind};base64," + base64.b64encode(data).decode("ascii"),
        )
        (result,) = self._results(request, 1, deadline)
        uploaded = UploadedImage(result.new_image_uuid, result.new_image_src, result.task_uuid)
        with self._uploads_lock:
            self._uploads[digest] = uploaded.uuid
        return uploaded

    # -- generation --------------------------------------------------------------

    def _generation(
        self,
        prompt: str,
        image: object,
        mask: object,
        options: GenerationOptions,
        deadline: Deadline,
    ) -> protocol.ImageTask:
        """Validate every argument, upload the inputs, and build the ``newTask``."""
        unknown = set(options) - set(GenerationOptions.__annotations__)
        if unknown:
            allowed = ", ".join(GenerationOptions.__annotations__)
            raise TypeError(f"unexpected keyword argument(s) {sorted(unknown)}; allowed: {allowed}")
        o: dict[str, Any] = {**_GENERATION_DEFAULTS, **options}
        prompt_text = _validate.text("prompt", prompt)
        if o["negative_prompt"] is not None:
            prompt_text += " -no " + _validate.text("negative_prompt", o["negative_prompt"])
        steps = o["steps"]
        step_count = None if steps is None else _validate.integer("steps", steps, 1, 1000)
        guidance, seed, use_cache = o["guidance"], o["seed"], o["use_cache"]
        scheduler, style, clip_skip = o["scheduler"], o["style"], o["clip_skip"]
        language, check_nsfw, weighting = o["language"], o["check_nsfw"], o["prompt_weighting"]
        lora_items = [self._lora(i, item) for i, item in enumerate(o["lora"] or ())]
        task = dict(
            task_uuid=_new_uuid(),
            prompt_text=prompt_text,
            number_results=_validate.integer("number_results", o["number_results"], 1),
            model_id=_validate.model("model", o["model"]),
            size_id=_validate.size("size", o["size"]),
            offset=_validate.integer("offset", o["offset"], 0),
            steps=step_count,
            g_scale=None if guidance is None else _validate.number("guidance", guidance, 0, 10),
            seed=None if seed is None else _validate.integer("seed", seed, 1),
            use_cache=None if use_cache is None else _validate.boolean("use_cache", use_cache),
            scheduler_id=None if scheduler is None
            else _validate.table_id("scheduler", scheduler, tables.Scheduler),
            style_id=None if style is None else _validate.table_id("style", style, tables.Style),
            clip_skip=None if clip_skip is None else _validate.integer("clip_skip", clip_skip, 0, 2),
            prompt_language_id=None if language is None else _validate.language("language", language),
            check_nsfw=None if check_nsfw is None else _validate.boolean("check_nsfw", check_nsfw),
            use_prompt_weighting=None if weighting is None
            else _validate.boolean("prompt_weighting", weighting),
            return_base64_image=_validate.boolean("return_base64", o["return_base64"]) or None,
            lora=lora_items or None,
        )  # fmt: skip
        controlnet = o["controlnet"] or ()
        controls = [self._check_controlnet(i, c, step_count) for i, c in enumerate(controlnet)]
        # Every scalar is valid: now read the image inputs (still nothing sent), then
        # upload what is local.
        uuids = self._image_uuids(
            {"image": image, "mask": mask}
            | {f"controlnet[{i}].guide_image": c.guide_image for i, c in enumerate(controls)},
            deadline,
        )
        control_items = [
            self._controlnet_item(c, uuids[f"controlnet[{i}].guide_image"])
            for i, c in enumerate(controls)
        ]
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
            task_type=int(task_type),
            image_initiator_uuid=uuids.get("image"),
            image_mask_initiator_uuid=uuids.get("mask"),
            control_net=control_items or None,
            **task,  # type: ignore[arg-type]
        )

    @staticmethod
    def _lora(index: int, item: object) -> protocol.LoraItem:
        name = f"lora[{index}]"
        if not isinstance(item, Lora):
            raise InvalidArgumentError(name, f"must be a Lora(model, weight), got {item!r}")
        return protocol.LoraItem(
            model_id=_validate.text(f"{name}.model", item.model),
            weight=_validate.number(f"{name}.weight", item.weight, 0, 1),
        )

    @staticmethod
    def _check_controlnet(index: int, item: object, steps: int | None) -> ControlNet:
        name = f"controlnet[{index}]"
        if not isinstance(item, ControlNet):
            raise InvalidArgumentError(name, f"must be a ControlNet(...), got {item!r}")
        _validate.choice(f"{name}.preprocessor", item.preprocessor, tables.CONTROLNET_PREPROCESSORS)
        _validate.number(f"{name}.weight", item.weight, 0, 1)
        last_step = 1000 if steps is None else steps
        for field in ("start_step", "end_step"):
            value = getattr(item, field)
            if value is not None:
                _validate.integer(f"{name}.{field}", value, 0, last_step)
        for field in ("start_percentage", "end_percentage"):
            value = getattr(item, field)
            if value is not None:
                _validate.number(f"{name}.{field}", value, 0, 1)
        if item.control_mode is not None:
            _validate.choice(
                f"{name}.control_mode", item.control_mode, [m.value for m in tables.ControlMode]
            )
        for field in ("low_threshold_canny", "high_threshold_canny"):
            value = getattr(item, field)
            if value is not None:
                _validate.integer(f"{name}.{field}", value, 0, 255)
        return item

    @staticmethod
    def _controlnet_item(item: ControlNet, guide_uuid: str | None) -> protocol.ControlNetItem:
        mode = item.control_mode
        return protocol.ControlNetItem(
            preprocessor=str(getattr(item.preprocessor, "value", item.preprocessor)),
            weight=float(item.weight),
            guide_image_uuid=guide_uuid,
            start_step=item.start_step,
            end_step=item.end_step,
            start_step_percentage=item.start_percentage,
            end_step_percentage=item.end_percentage,
            control_mode=None if mode is None else str(getattr(mode, "value", mode)),
            low_threshold_canny=item.low_threshold_canny,
            high_threshold_canny=item.high_threshold_canny,
        )

    # -- public tasks --------------------------------------------------------------

    def stream_images(
        self,
        prompt: str,
        *,
        image: _inputs.ImageInput | None = None,
        mask: _inputs.ImageInput | None = None,
        **options: Unpack[GenerationOptions],
    ) -> Iterator[Image]:
        """Generate images and yield each one as it arrives (in the calling thread).

        Text-to-image without ``image``; image-to-image with it; inpainting with
        ``image`` and ``mask``; ControlNet with ``controlnet=[...]``. Arguments are
        checked and inputs uploaded when the iteration starts. Stopping the
        iteration early abandons the task (later results are discarded).

        Args:
            prompt: what to draw.
            image: the initial image (any image input).
            mask: the inpainting mask (any image input; white = repaint).
            **options: see :class:`GenerationOptions`.

        Yields:
            Each distinct :class:`Image`, until ``number_results`` have arrived.

        Raises:
            InvalidArgumentError: an invalid argument (nothing was sent).
            TaskError: the server reported an error for the task.
            RequestTimeoutError: ``timeout`` passed (it covers the whole call).
            SessionExpiredError, ConnectionFailedError, AuthenticationError,
            ClientClosedError: the connection failed for good, or the client closed.
        """
        if mask is not None and image is None:
            raise InvalidArgumentError("mask", "inpainting needs image= as well as mask=")
        deadline = self._deadline(options.get("timeout", DEFAULT))
        on_image = options.get("on_image")
        if on_image is not None and not callable(on_image):
            raise InvalidArgumentError("on_image", f"must be callable, got {on_image!r}")
        task = self._generation(prompt, image, mask, options, deadline)
        for item in self._results(task, task.number_results, deadline):
            result = _image(item)
            if on_image is not None:
                on_image(result)
            yield result

    def text2img(self, prompt: str, **options: Unpack[GenerationOptions]) -> list[Image]:
        """Generate images from a prompt (taskType 1, or 9 with ``controlnet``).

        Blocks until all ``number_results`` images have arrived (over one or more
        frames; repeats dropped). Example::

            images = client.text2img("a lighthouse at dawn", number_results=4, seed=7)

        Args:
            prompt: what to draw.
            **options: see :class:`GenerationOptions`.

        Returns:
            The images, in arrival order.

        Raises:
            InvalidArgumentError, TaskError, RequestTimeoutError, SessionExpiredError,
            ConnectionFailedError, AuthenticationError, ClientClosedError: as
            :meth:`stream_images`.
        """
        return list(self.stream_images(prompt, **options))

    def img2img(
        self, prompt: str, image: _inputs.ImageInput, **options: Unpack[GenerationOptions]
    ) -> list[Image]:
        """Generate images from a prompt and an initial image (taskType 2, or 10 with
        ``controlnet``).

        Args:
            prompt: what to draw.
            image: the initial image: a path, bytes, file object, PIL image, image
                UUID or earlier result (local data is uploaded once per client).
            **options: see :class:`GenerationOptions`.

        Returns and raises as :meth:`text2img`.
        """
        if image is None:
            raise InvalidArgumentError("image", "img2img needs an image")
        return list(self.stream_images(prompt, image=image, **options))

    def inpaint(
        self,
        prompt: str,
        image: _inputs.ImageInput,
        mask: _inputs.ImageInput,
        **options: Unpack[GenerationOptions],
    ) -> list[Image]:
        """Repaint the masked part of an image (taskType 3, or 10 with ``controlnet``).

        Args:
            prompt: what to draw in the masked area.
            image: the image to edit (any image input).
            mask: the mask (any image input; white areas are repainted).
            **options: see :class:`GenerationOptions`.

        Returns and raises as :meth:`text2img`.
        """
        if image is None or mask is None:
            raise InvalidArgumentError("image" if image is None else "mask", "inpaint needs both")
        return list(self.stream_images(prompt, image=image, mask=mask, **options))

    def upload_image(
        self, image: _inputs.ImageInput, *, timeout: Timeout = DEFAULT
    ) -> UploadedImage:
        """Upload an image; return its server UUID and URL (taskType 7).

        The same content is uploaded once per client: later calls (and calls that
        take this image as input) reuse the UUID.

        Raises:
            InvalidArgumentError: a missing file or data that is not PNG, JPEG or WEBP.
            TaskError, RequestTimeoutError, ...: as :meth:`text2img`.
        """
        deadline = self._deadline(timeout)
        loaded = _inputs.load("image", image)
        if isinstance(loaded, str):
            raise InvalidArgumentError(
                "image", "is already on the server (a UUID or a result); upload local images"
            )
        return self._upload(loaded, deadline)

    def _single_image(self, request: Any, deadline: Deadline) -> Image:
        (item,) = self._results(request, 1, deadline)
        if isinstance(item, protocol.PreprocessResult):
            return Image._from_result(
                uuid=item.new_image_uuid, url=item.new_image_src, task_uuid=item.task_uuid,
                nsfw=item.nsfw,
            )  # fmt: skip
        return _image(item)

    def upscale(
        self, image: _inputs.ImageInput, factor: int = 2, *, timeout: Timeout = DEFAULT
    ) -> Image:
        """Upscale an image by 2, 3 or 4 (``newUpscaleGan``).

        Raises:
            InvalidArgumentError: ``factor`` not 2, 3 or 4, or a bad image input.
            TaskError, RequestTimeoutError, ...: as :meth:`text2img`.
        """
        deadline = self._deadline(timeout)
        upscale_factor = _validate.integer("factor", factor, 2, 4)
        uuids = self._image_uuids({"image": image}, deadline)
        request = protocol.UpscaleGan(_new_uuid(), uuids["image"], upscale_factor)
        return self._single_image(request, deadline)

    def remove_background(self, image: _inputs.ImageInput, *, timeout: Timeout = DEFAULT) -> Image:
        """Remove the background of an image; the result is an RGBA PNG (taskType 8).

        Raises:
            InvalidArgumentError, TaskError, RequestTimeoutError, ...: as :meth:`upscale`.
        """
        deadline = self._deadline(timeout)
        uuids = self._image_uuids({"image": image}, deadline)
        return self._single_image(protocol.RemoveBackground(_new_uuid(), uuids["image"]), deadline)

    def image2text(self, image: _inputs.ImageInput, *, timeout: Timeout = DEFAULT) -> str:
        """Describe an image in words (``newReverseImageClip``).

        Returns:
            The caption.

        Raises:
            InvalidArgumentError, TaskError, RequestTimeoutError, ...: as :meth:`upscale`.
        """
        deadline = self._deadline(timeout)
        uuids = self._image_uuids({"image": image}, deadline)
        request = protocol.ReverseImageClip(_new_uuid(), uuids["image"])
        (item,) = self._results(request, 1, deadline)
        text: str = item.text
        return text

    def enhance_prompt(
        self,
        prompt: str,
        *,
        versions: int = 1,
        max_length: int = 380,
        language: int = 1,
        timeout: Timeout = DEFAULT,
    ) -> list[str]:
        """Return enriched versions of a prompt (``newPromptEnhance``).

        Args:
            prompt: the prompt to enhance.
            versions: how many versions, 1 to 5.
            max_length: the longest version, 1 to 380 characters.
            language: the ``promptLanguageId``, 1 to 298 (1: English).
            timeout: seconds for the call.

        Returns:
            ``versions`` distinct texts (they may arrive over several frames).

        Raises:
            InvalidArgumentError, TaskError, RequestTimeoutError, ...: as :meth:`text2img`.
        """
        deadline = self._deadline(timeout)
        request = protocol.PromptEnhance(
            task_uuid=_new_uuid(),
            prompt=_validate.text("prompt", prompt),
            prompt_max_length=_validate.integer("max_length", max_length, 1, 380),
            prompt_versions=_validate.integer("versions", versions, 1, 5),
            prompt_language_id=_validate.language("language", language),
        )
        return [item.text for item in self._results(request, request.prompt_versions, deadline)]

    def preprocess_controlnet(
        self,
        image: _inputs.ImageInput,
        preprocessor: str,
        *,
        width: int | None = None,
        height: int | None = None,
        low_threshold_canny: int | None = None,
        high_threshold_canny: int | None = None,
        include_hands_and_face: bool | None = None,
        mask: _inputs.ImageInput | None = None,
        timeout: Timeout = DEFAULT,
    ) -> Image:
        """Turn an image into a ControlNet guide (``newPreProcessControlNet``).

        Args:
            image: the source image (any image input).
            preprocessor: one of :data:`diffusionmaster.tables.PREPROCESSOR_TYPES`
                (canny, depth, mlsd, normalbae, openpose, tile, seg, lineart,
                lineart_anime, shuffle, scribble, softedge).
            width, height: output size in pixels (1 to 2048).
            low_threshold_canny, high_threshold_canny: canny thresholds (0 to 255).
            include_hands_and_face: openpose: detect hands and faces too.
            mask: an optional mask image.
            timeout: seconds for the call.

        Returns:
            The guide image; pass it as ``ControlNet(guide_image=...)``.

        Raises:
            InvalidArgumentError, TaskError, RequestTimeoutError, ...: as :meth:`text2img`.
        """
        deadline = self._deadline(timeout)
        kind = _validate.choice("preprocessor", preprocessor, tables.PREPROCESSOR_TYPES)
        dims = {
            name: None if value is None else _validate.integer(name, value, 1, 2048)
            for name, value in (("width", width), ("height", height))
        }
        thresholds = {
            name: None if value is None else _validate.integer(name, value, 0, 255)
            for name, value in (
                ("low_threshold_canny", low_threshold_canny),
                ("high_threshold_canny", high_threshold_canny),
            )
        }
        hands = None if include_hands_and_face is None else _validate.boolean(
            "include_hands_and_face", include_hands_and_face
        )  # fmt: skip
        uuids = self._image_uuids({"image": image, "mask": mask}, deadline)
        request = protocol.PreprocessControlNet(
            task_uuid=_new_uuid(),
            pre_processor_type=kind,
            guide_image_uuid=uuids["image"],
            width=dims["width"],
            height=dims["height"],
            low_threshold_canny=thresholds["low_threshold_canny"],
            high_threshold_canny=thresholds["high_threshold_canny"],
            include_hands_and_face_open_pose=hands,
            guide_image_mask_uuid=uuids.get("mask"),
        )
        return self._single_image(request, deadline)

    # -- concurrency ---------------------------------------------------------------

    def submit(self, method: Callable[..., T], /, *args: Any, **kwargs: Any) -> Future[T]:
        """Start a call in the background and return a :class:`~concurrent.futures.Future`.

        ``method`` is one of this client's methods, e.g.::

            futures = [client.submit(client.text2img, p) for p in prompts]
            results = [f.result() for f in futures]

        The calls run on a small pool of worker threads (``diffusionmaster-worker``,
        up to 32) created on first use and stopped by :meth:`close`.
        """
        with self._uploads_lock:
            if self._executor is None:
                self._executor = ThreadPoolExecutor(
                    max_workers=32, thread_name_prefix="diffusionmaster-worker"
                )
            executor = self._executor
        return executor.submit(method, *args, **kwargs)
