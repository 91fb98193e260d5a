"""The public blocking client.

Every method validates its arguments first (raising
:class:`~diffusionmaster.InvalidArgumentError` before anything is sent), reads
local image inputs and uploads them (once per distinct content per client),
sends one task and blocks until that task's results arrive or its timeout
passes. A :class:`Client` is thread-safe: share one per process.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import os
import queue
import threading
import uuid
import weakref
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, TypeVar

from . import _inputs, _validate, generation, protocol, tables
from .config import DEFAULT, Deadline, DefaultType, Heartbeat, Reconnect
from .errors import ClientClosedError, InvalidArgumentError, ProtocolError, RequestTimeoutError
from .generation import GenerationOptions
from .models import Image, UploadedImage, image_format
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


class _UploadSlot:
    """An upload in flight: other calls with the same bytes wait for it."""

    __slots__ = ("done", "result")

    def __init__(self) -> None:
        self.done = threading.Event()
        self.result: UploadedImage | None = None  # None once done: it failed


class Client:
    """A blocking, thread-safe client of the DiffusionMaster WebSocket API.

    Creating a client connects and authenticates; use it as a context manager or
    call :meth:`close`. One client holds one WebSocket, shared by all threads;
    every call receives only its own results. When the connection drops, the
    client reconnects and resumes its session so that waiting calls still get
    their results (see :class:`~diffusionmaster.Reconnect`).

    Wherever a call takes an image, it accepts a path (``str`` or
    ``os.PathLike``), ``bytes``, a binary file object, a ``PIL.Image.Image``, an
    image UUID string, or an :class:`~diffusionmaster.Image` /
    :class:`~diffusionmaster.UploadedImage` result. Local images (PNG, JPEG or
    WEBP) are uploaded once per distinct content per client; UUIDs and results
    are sent by reference.

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
        # _lock guards _uploads, _executor and _closed. _uploads maps the SHA-256 of
        # uploaded bytes to the result, or to the slot of an upload in flight.
        self._lock = threading.Lock()
        self._uploads: dict[bytes, UploadedImage | _UploadSlot] = {}
        self._executor: ThreadPoolExecutor | None = None
        self._closed = False
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
        # A client dropped without close() (say, a notebook cell run again) must not keep
        # its socket and threads: they hold the supervisor, never the client, so the
        # client can be collected, and then this closes the supervisor. Not at exit:
        # the threads are daemons, and exit must never wait for a network.
        self._finalizer = weakref.finalize(self, self._supervisor.close)
        self._finalizer.atexit = False

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
        with self._lock:
            self._closed = True
            executor, self._executor = self._executor, None
        self._supervisor.close()
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

    def _resolve(self, loaded: dict[str, str | bytes], deadline: Deadline) -> dict[str, str]:
        """The image UUIDs of loaded inputs, uploading local bytes (once per content)."""
        return {
            name: value if isinstance(value, str) else self._upload(value, deadline).uuid
            for name, value in loaded.items()
        }

    def _upload(self, data: bytes, deadline: Deadline) -> UploadedImage:
        """Upload ``data`` unless this client already did (or is doing it right now)."""
        digest = hashlib.sha256(data).digest()
        while True:
            with self._lock:
                entry = self._uploads.get(digest)
                if entry is None:
                    slot = self._uploads[digest] = _UploadSlot()
                    break
            if isinstance(entry, UploadedImage):
                return entry
            # Another call is uploading the same bytes: wait for its result rather than
            # upload them twice. If it fails, the loop lets this call try in turn.
            if not entry.done.wait(deadline.remaining()):
                raise RequestTimeoutError(
                    "an upload of the same image by another call did not finish in time"
                )
            if entry.result is not None:
                return entry.result
        try:
            uploaded = self._send_upload(data, deadline)
        except BaseException:
            with self._lock:
                del self._uploads[digest]
            slot.done.set()
            raise
        with self._lock:
            self._uploads[digest] = uploaded
        slot.result = uploaded
        slot.done.set()
        return uploaded

    def _send_upload(self, data: bytes, deadline: Deadline) -> UploadedImage:
        kind = image_format(data) or "png"
        request = protocol.ImageUpload(
            task_uuid=_new_uuid(),
            image_base64=f"data:image/{kind};base64," + base64.b64encode(data).decode("ascii"),
        )
        (result,) = self._results(request, 1, deadline)
        return UploadedImage(result.new_image_uuid, result.new_image_src, result.task_uuid)

    def _single_image(self, request: Any, deadline: Deadline) -> Image:
        (item,) = self._results(request, 1, deadline)
        if isinstance(item, protocol.PreprocessResult):
            return Image._from_result(
                uuid=item.new_image_uuid, url=item.new_image_src, task_uuid=item.task_uuid,
                nsfw=item.nsfw,
            )  # fmt: skip
        return _image(item)

    # -- generation --------------------------------------------------------------

    def _generate(
        self, prompt: str, image: object, mask: object, options: dict[str, Any]
    ) -> Iterator[Image]:
        """Check everything now (errors raise at the call); upload and send on iteration."""
        gen = generation.prepare(prompt, image, mask, options)
        return self._stream(gen, self._deadline(gen.timeout))

    def _stream(self, gen: generation.Generation, deadline: Deadline) -> Iterator[Image]:
        """Upload the inputs, send the task, and yield its images as they arrive."""
        uuids = self._resolve(gen.inputs, deadline)
        task = generation.build_task(gen, uuids, _new_uuid())
        for item in self._results(task, task.number_results, deadline):
            result = _image(item)
            if gen.on_image is not None:
                gen.on_image(result)
            yield result

    # -- public tasks --------------------------------------------------------------

    def stream_images(
        self,
        prompt: str,
        *,
        image: _inputs.ImageInput | None = None,
        mask: _inputs.ImageInput | None = None,
        **options: Unpack[GenerationOptions],
    ) -> Iterator[Image]:
        """Generate images and yield each one as it arrives, in the calling thread.

        Text-to-image without ``image``; image-to-image with it; inpainting with
        ``image`` and ``mask``; ControlNet with ``controlnet=[...]``. The arguments
        are checked and local files read at once (errors raise here); the inputs
        are uploaded and the task sent when the iteration starts. Stopping the
        iteration early abandons the task (later results are discarded). Example::

            for image in client.stream_images("a forest", number_results=4):
                print(image.save("."))  # ./<uuid>.jpg, each as soon as it arrives

        Args:
            prompt: what to draw.
            image: the initial image (any image input).
            mask: the inpainting mask (any image input; white = repaint).
            **options: see :class:`GenerationOptions`.

        Returns:
            An iterator of each distinct :class:`Image`, in arrival order, until
            ``number_results`` have arrived.

        Raises:
            InvalidArgumentError: an invalid argument (nothing was sent).
            TypeError: an unknown keyword argument.
            TaskError: the server reported an error for the task.
            RequestTimeoutError: ``timeout`` passed (it covers the whole call).
            SessionExpiredError, ConnectionFailedError, AuthenticationError,
            ClientClosedError: the connection failed for good, or the client closed.
        """
        return self._generate(prompt, image, mask, dict(options))

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
            InvalidArgumentError, TypeError, TaskError, RequestTimeoutError,
            SessionExpiredError, ConnectionFailedError, AuthenticationError,
            ClientClosedError: as :meth:`stream_images`.
        """
        return list(self._generate(prompt, None, None, dict(options)))

    def img2img(
        self, prompt: str, image: _inputs.ImageInput, **options: Unpack[GenerationOptions]
    ) -> list[Image]:
        """Generate images from a prompt and an initial image (taskType 2, or 10 with
        ``controlnet``).

        Example::

            (variant,) = client.img2img("the same, at night", "photo.png")

        Args:
            prompt: what to draw.
            image: the initial image: a path, bytes, file object, PIL image, image
                UUID or earlier result (local data is uploaded once per client).
            **options: see :class:`GenerationOptions`.

        Returns:
            The images, in arrival order.

        Raises:
            InvalidArgumentError, TypeError, TaskError, RequestTimeoutError,
            SessionExpiredError, ConnectionFailedError, AuthenticationError,
            ClientClosedError: as :meth:`stream_images`.
        """
        if image is None:
            raise InvalidArgumentError("image", "img2img needs an image")
        return list(self._generate(prompt, image, None, dict(options)))

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

        Returns:
            The images, in arrival order.

        Raises:
            InvalidArgumentError, TypeError, TaskError, RequestTimeoutError,
            SessionExpiredError, ConnectionFailedError, AuthenticationError,
            ClientClosedError: as :meth:`stream_images`.
        """
        if image is None or mask is None:
            raise InvalidArgumentError("image" if image is None else "mask", "inpaint needs both")
        return list(self._generate(prompt, image, mask, dict(options)))

    def upload_image(
        self, image: _inputs.ImageInput, *, timeout: Timeout = DEFAULT
    ) -> UploadedImage:
        """Upload an image; return its server UUID and URL (taskType 7).

        The same content is uploaded once per client: a later call with the same
        bytes (and any call taking them as input) reuses the UUID. An input already
        on the server (an image UUID, an :class:`Image` or :class:`UploadedImage`)
        is returned as an :class:`UploadedImage` without sending anything.

        Args:
            image: a path, bytes, binary file object or PIL image (PNG, JPEG or WEBP).
            timeout: seconds for the call.

        Returns:
            The stored image: pass it to any other call.

        Raises:
            InvalidArgumentError: a missing file or data that is not PNG, JPEG or WEBP.
            TaskError, RequestTimeoutError, SessionExpiredError, ConnectionFailedError,
            AuthenticationError, ClientClosedError: as :meth:`stream_images`.
        """
        deadline = self._deadline(timeout)
        loaded = _inputs.load("image", image)
        if isinstance(image, UploadedImage):
            return image
        if isinstance(loaded, str):
            url = image.url if isinstance(image, Image) else None
            return UploadedImage(loaded, url)
        return self._upload(loaded, deadline)

    def upscale(
        self, image: _inputs.ImageInput, factor: int = 2, *, timeout: Timeout = DEFAULT
    ) -> Image:
        """Upscale an image by 2, 3 or 4 (``newUpscaleGan``).

        Args:
            image: any image input.
            factor: 2, 3 or 4: the result is that many times wider and higher.
            timeout: seconds for the call (upload included).

        Returns:
            The upscaled image.

        Raises:
            InvalidArgumentError: ``factor`` not 2, 3 or 4, or a bad image input.
            TaskError, RequestTimeoutError, SessionExpiredError, ConnectionFailedError,
            AuthenticationError, ClientClosedError: as :meth:`stream_images`.
        """
        deadline = self._deadline(timeout)
        upscale_factor = _validate.integer("factor", factor, 2, 4)
        uuids = self._resolve(_inputs.load_all({"image": image}), deadline)
        request = protocol.UpscaleGan(_new_uuid(), uuids["image"], upscale_factor)
        return self._single_image(request, deadline)

    def remove_background(self, image: _inputs.ImageInput, *, timeout: Timeout = DEFAULT) -> Image:
        """Remove the background of an image (taskType 8).

        Args:
            image: any image input.
            timeout: seconds for the call (upload included).

        Returns:
            The cut-out: a PNG with an alpha channel (RGBA).

        Raises:
            InvalidArgumentError, TaskError, RequestTimeoutError, ...: as :meth:`upscale`.
        """
        deadline = self._deadline(timeout)
        uuids = self._resolve(_inputs.load_all({"image": image}), deadline)
        return self._single_image(protocol.RemoveBackground(_new_uuid(), uuids["image"]), deadline)

    def image2text(self, image: _inputs.ImageInput, *, timeout: Timeout = DEFAULT) -> str:
        """Describe an image in words (``newReverseImageClip``).

        Args:
            image: any image input.
            timeout: seconds for the call (upload included).

        Returns:
            The caption.

        Raises:
            InvalidArgumentError, TaskError, RequestTimeoutError, ...: as :meth:`upscale`.
        """
        deadline = self._deadline(timeout)
        uuids = self._resolve(_inputs.load_all({"image": image}), deadline)
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
        language_id: int | None = 1,
        timeout: Timeout = DEFAULT,
    ) -> list[str]:
        """Return enriched versions of a prompt (``newPromptEnhance``).

        Example::

            prompts = client.enhance_prompt("a castle", versions=3)

        Args:
            prompt: the prompt to enhance.
            versions: how many versions, 1 to 5.
            max_length: the longest version, 1 to 380 characters.
            language_id: the ``promptLanguageId``, 1 to 298 (1: English); None
                lets the server detect it.
            timeout: seconds for the call.

        Returns:
            ``versions`` distinct texts, in arrival order (they may come over
            several frames).

        Raises:
            InvalidArgumentError, TaskError, RequestTimeoutError, ...: as :meth:`upscale`.
        """
        deadline = self._deadline(timeout)
        request = protocol.PromptEnhance(
            task_uuid=_new_uuid(),
            prompt=_validate.text("prompt", prompt),
            prompt_max_length=_validate.integer("max_length", max_length, 1, 380),
            prompt_versions=_validate.integer("versions", versions, 1, 5),
            prompt_language_id=_validate.optional(_validate.language, "language_id", language_id),
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
        """Turn an image into a ControlNet guide (``newPreProcessControlNet``, taskType 11).

        Example::

            edges = client.preprocess_controlnet("photo.png", "canny")
            client.text2img("a castle", controlnet=[ControlNet("canny", edges)])

        Args:
            image: the source image (any image input).
            preprocessor: one of :data:`diffusionmaster.tables.PREPROCESSOR_TYPES`
                (canny, depth, lineart, lineart_anime, mlsd, normalbae, openpose,
                scribble, seg, shuffle, softedge, tile).
            width, height: output size in pixels (1 to 2048); one alone keeps the
                aspect ratio; neither keeps the source's size.
            low_threshold_canny, high_threshold_canny: canny thresholds (0 to 255).
            include_hands_and_face: openpose: detect hands and faces too.
            mask: an optional mask image (any image input).
            timeout: seconds for the call (uploads included).

        Returns:
            The guide image; pass it as ``ControlNet(preprocessor, guide_image)``.

        Raises:
            InvalidArgumentError, TaskError, RequestTimeoutError, ...: as :meth:`upscale`.
        """
        deadline = self._deadline(timeout)
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
        uuids = self._resolve(_inputs.load_all({"image": image, "mask": mask}), deadline)
        request = protocol.PreprocessControlNet(
            task_uuid=_new_uuid(),
            pre_processor_type=kind,
            guide_image_uuid=uuids["image"],
            width=size["width"],
            height=size["height"],
            low_threshold_canny=low,
            high_threshold_canny=high,
            include_hands_and_face_open_pose=hands,
            guide_image_mask_uuid=uuids.get("mask"),
        )
        return self._single_image(request, deadline)

    # -- concurrency ---------------------------------------------------------------

    def submit(self, method: Callable[..., T], /, *args: Any, **kwargs: Any) -> Future[T]:
        """Start a call in the background and return a :class:`~concurrent.futures.Future`.

        This is how one thread runs several tasks at once: ``method`` is one of this
        client's methods, and its arguments follow. Collect the results in order, or
        as they complete::

            from concurrent.futures import as_completed

            futures = [client.submit(client.text2img, p, seed=7) for p in prompts]
            images = [f.result() for f in futures]  # in order; raises a call's error

            jobs = [client.submit(client.upscale, image, 4) for image in images]
            for done in as_completed(jobs):  # in the order they finish
                print(done.result().save("."))

        The calls run on a pool of worker threads (``diffusionmaster-worker``, up to
        32) created on first use and stopped by :meth:`close`; each call still
        receives only its own results. Callbacks added with
        ``Future.add_done_callback`` run on a worker thread.

        Args:
            method: the callable to run, usually a bound method of this client.
            *args, **kwargs: its arguments.

        Returns:
            A Future of the call's result (``f.result(timeout)`` waits for it and
            raises the call's exception, if any).

        Raises:
            ClientClosedError: the client is closed.
        """
        with self._lock:
            if self._closed:
                raise ClientClosedError("the client is closed")
            if self._executor is None:
                self._executor = ThreadPoolExecutor(
                    max_workers=32, thread_name_prefix="diffusionmaster-worker"
                )
            return self._executor.submit(method, *args, **kwargs)
