"""The public blocking client.

Every method checks its arguments first (raising
:class:`~diffusionmaster.InvalidArgumentError` before anything is sent), reads
local image inputs, and runs one funnel: upload the local inputs (once per
distinct content per client), send the task, and wait for its results or its
timeout. A task in flight costs a :class:`~diffusionmaster.calls.Call` handle,
not a thread: :meth:`Client.submit` and :meth:`Client.batch` keep any number in
flight from one thread. A :class:`Client` is thread-safe: share one per process.
"""

from __future__ import annotations

import collections
import concurrent.futures
import functools
import hashlib
import logging
import os
import threading
import time
import uuid
import weakref
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, TypeVar

from . import _http, _inputs, _validate, protocol, tasks
from .batch import Batch
from .calls import Call
from .config import DEFAULT, MAX_MESSAGE_SIZE, DefaultType, Heartbeat, Reconnect, message_size
from .errors import (
    ClientClosedError,
    DiffusionMasterError,
    InvalidArgumentError,
    RequestTimeoutError,
)
from .generation import GenerationOptions
from .models import Image, UploadedImage
from .supervisor import State, StateListener, Supervisor, check_not_internal
from .tasks import TaskSpec
from .usage import Usage, UsageMeter

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
URL_VARIABLE = "DIFFUSIONMASTER_URL"
#: Distinct uploads remembered per client (least recently used forgotten first).
UPLOAD_CACHE_SIZE = 1024

Timeout = float | None | DefaultType
T = TypeVar("T")

_CLIENTS: weakref.WeakSet[Client] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    # Only the forking thread exists now: rebuild the locks others may have held.
    for client in list(_CLIENTS):
        client._lock = threading.Lock()
        client._executor = None


os.register_at_fork(after_in_child=_after_fork_in_child)


def _new_uuid() -> str:
    return str(uuid.uuid4())


class _Abandoned(DiffusionMasterError):
    """Ends a call nobody waits for any more (a stream stopped early, a callback raised)."""


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
        url: the WebSocket URL; defaults to the ``DIFFUSIONMASTER_URL`` variable, and
            overrides ``environment``.
        environment: ``"production"`` or ``"development"`` (protocol §1).
        timeout: the default deadline of each call, in seconds (None: no limit).
        connect_timeout: the deadline of each connection attempt (TCP, WebSocket
            handshake and authentication).
        reconnect: the reconnect policy.
        heartbeat: the heartbeat policy.
        http_proxy_host, http_proxy_port: an HTTP proxy for the WebSocket.
        max_message_size: the largest message accepted from the server, in bytes
            (default 256 MiB; None: no cap). A larger one fails the connection
            (close code 1009, logged); the client reconnects and resumes the session.

    Raises:
        InvalidArgumentError: no API key, an unknown environment, or a URL that is
            not ``ws://`` or ``wss://`` with a host.
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
        max_message_size: int | None = MAX_MESSAGE_SIZE,
    ) -> None:
        if api_key is None:
            api_key = os.environ.get(API_KEY_VARIABLE)
        if api_key is not None and not isinstance(api_key, str):
            raise InvalidArgumentError("api_key", f"must be a string, got {type(api_key).__name__}")
        if not api_key:
            raise InvalidArgumentError(
                "api_key", f"no API key: pass api_key= or set the {API_KEY_VARIABLE} variable"
            )
        url_given = url is not None
        if url is None:
            url = os.environ.get(URL_VARIABLE) or ENDPOINTS.get(environment)
            if url is None:
                raise InvalidArgumentError(
                    "environment", f"must be one of {', '.join(ENDPOINTS)}; got {environment!r}"
                )
        self.url = _validate.url("url" if url_given else URL_VARIABLE, url)
        self.timeout = _validate.duration("timeout", timeout)
        connect_timeout = _validate.duration("connect_timeout", connect_timeout)
        # _lock guards _uploads, _executor, _batches and _closed. _uploads maps the
        # SHA-256 of uploaded bytes to the upload's call (in flight or done).
        self._lock = threading.Lock()
        self._uploads: collections.OrderedDict[bytes, Call[UploadedImage]] = (
            collections.OrderedDict()
        )
        self._executor: ThreadPoolExecutor | None = None
        self._batches: weakref.WeakSet[Batch] = weakref.WeakSet()
        self._closed = False
        self._usage = UsageMeter()
        self._downloads = _http.Downloader()
        #: turns image items into Images that download through this client's pool
        self._image_of = functools.partial(tasks.image_of, downloader=self._downloads)
        options: dict[str, Any] = {"max_message_size": message_size(max_message_size)}
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
        _CLIENTS.add(self)
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

        Calls still waiting raise :class:`~diffusionmaster.ClientClosedError` at once;
        tasks of a batch not yet sent are cancelled.
        """
        with self._lock:
            self._closed = True
            executor, self._executor = self._executor, None
            batches = list(self._batches)
        for batch in batches:
            batch.cancel()
        self._supervisor.close()
        self._downloads.close()
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

    @property
    def usage(self) -> Usage:
        """Tasks, images and cost (exact) of this client's calls so far. Thread-safe.

        A call is counted before it returns (or raises).
        """
        return self._usage.total

    def add_state_listener(self, listener: StateListener) -> None:
        """Call ``listener(state)`` on every state change.

        Listeners run on a thread of the client (``diffusionmaster-events``), in order,
        never on the reader thread; they must not block for long, and a blocking
        client call made from one raises :class:`~diffusionmaster.ReentrancyError`.
        The client keeps a reference to each listener until it is removed or the
        client is closed: a listener that refers to its client keeps a client that
        was dropped without :meth:`close` alive.

        Raises:
            InvalidArgumentError: ``listener`` is not callable.
        """
        if not callable(listener):
            raise InvalidArgumentError("listener", f"must be callable, got {listener!r}")
        self._supervisor.add_listener(listener)

    def remove_state_listener(self, listener: StateListener) -> None:
        """Stop calling ``listener``."""
        self._supervisor.remove_listener(listener)

    # -- the funnel ----------------------------------------------------------------

    def _deadline(self, timeout: Timeout) -> float | None:
        """The monotonic end of a call's deadline (None: no limit)."""
        seconds = self.timeout if timeout is DEFAULT else _validate.duration("timeout", timeout)
        return None if seconds is None else time.monotonic() + seconds

    def _run(self, spec: TaskSpec[T]) -> T:
        """Run ``spec`` and block until its result (or error, or deadline)."""
        check_not_internal()
        end = self._deadline(spec.timeout)
        if spec.is_ready:
            ready: T = spec.ready
            return ready
        if end is not None and end <= time.monotonic():
            # timeout=0: the deadline has passed before anything could be sent.
            raise RequestTimeoutError(f"{spec.kind}: the timeout passed before the task was sent")
        if spec.on_item is not None:
            return spec.adapt(list(self._iterate(spec, end)))
        call = self._start(spec, end)
        if not call.wait(call.remaining()):
            self._supervisor.expire(call)
        return call.outcome()

    def _stream(self, spec: TaskSpec[Any]) -> Iterator[Any]:
        """Check the deadline now (errors raise here); send when iterated."""
        end = self._deadline(spec.timeout)
        return self._iterate(spec, end)

    def _iterate(self, spec: TaskSpec[Any], end: float | None) -> Iterator[Any]:
        check_not_internal()
        call = self._start(spec, end)
        try:
            for item in call.stream(call.remaining):
                if spec.on_item is not None:
                    spec.on_item(item)
                yield item
            if not call.done():
                self._supervisor.expire(call)
            call.outcome()
        finally:
            if not call.done():
                self._supervisor.abandon(call, _Abandoned(f"task {call.task_uuid} abandoned"))

    def _start(
        self, spec: TaskSpec[T], end: float | None, meters: tuple[UsageMeter, ...] = ()
    ) -> Call[T]:
        """Start ``spec``: upload its local inputs, then send it. Never blocks on the network.

        Errors (the client closed, the deadline passed) fail the returned call.
        """
        if spec.upload is not None:
            return self._upload(spec.upload, end, meters)  # type: ignore[return-value]
        item = self._image_of if spec.item is tasks.image_of else spec.item
        call: Call[T] = Call(
            _new_uuid(), spec.kind, spec.expected, item=item, adapt=spec.adapt,
            dispatch=self._supervisor.post, deadline=end, meters=(self._usage, *meters),
        )  # fmt: skip
        uuids = {name: v for name, v in spec.inputs.items() if isinstance(v, str)}
        local = {name: v for name, v in spec.inputs.items() if isinstance(v, bytes)}
        try:
            uploads = {name: self._upload(data, end) for name, data in local.items()}
        except BaseException as exc:
            call.fail(exc)
            return call
        if not uploads:
            self._send(call, spec.build(uuids, call.task_uuid))
            return call
        waiting = [len(uploads)]
        lock = threading.Lock()

        def uploaded(_: Call[UploadedImage]) -> None:
            # On the dispatcher thread, once per upload: send when the last one is in.
            with lock:
                waiting[0] -= 1
                if waiting[0]:
                    return
            if call.done():
                return
            for name, upload in uploads.items():
                error = upload.error()
                if error is not None:
                    call.fail(error)
                    return
                uuids[name] = upload.outcome().uuid
            self._send(call, spec.build(uuids, call.task_uuid))

        call.blocker = list(uploads.values())
        for upload in uploads.values():
            upload.add_done_callback(uploaded)
        return call

    def _send(self, call: Call[Any], request: Any) -> None:
        """Encode and send ``request`` for ``call``, unless its deadline has passed."""
        if call.deadline is not None and time.monotonic() >= call.deadline:
            call.fail(RequestTimeoutError(
                f"task {call.task_uuid} was not sent: its deadline had passed",
                task_uuid=call.task_uuid,
            ))  # fmt: skip
            return
        try:
            self._supervisor.send(call, protocol.encode(request))
        except BaseException as exc:
            call.fail(exc)

    def _upload(
        self, data: bytes, end: float | None, meters: tuple[UsageMeter, ...] = ()
    ) -> Call[UploadedImage]:
        """The upload of ``data``: this client's earlier one, one in flight, or a new one."""
        digest = hashlib.sha256(data).digest()
        with self._lock:
            call = self._uploads.get(digest)
            if call is not None and call.error() is None:
                self._uploads.move_to_end(digest)
                return call
            call = Call(
                _new_uuid(), "upload", 1, item=tasks.uploaded, adapt=tasks.first,
                dispatch=self._supervisor.post, deadline=end, meters=(self._usage, *meters),
            )  # fmt: skip
            self._uploads[digest] = call
            while len(self._uploads) > UPLOAD_CACHE_SIZE:
                self._uploads.popitem(last=False)

        def forget_failed(done: Call[UploadedImage]) -> None:
            if done.error() is not None:
                with self._lock:
                    if self._uploads.get(digest) is done:
                        del self._uploads[digest]

        call.add_done_callback(forget_failed)
        self._send(call, tasks.upload_request(data, call.task_uuid))
        return call

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
        return self._stream(tasks.stream_images(prompt, image=image, mask=mask, **options))

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
        return self._run(tasks.text2img(prompt, **options))

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
        return self._run(tasks.img2img(prompt, image, **options))

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
        return self._run(tasks.inpaint(prompt, image, mask, **options))

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
        return self._run(tasks.upload_image(image, timeout=timeout))

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
        return self._run(tasks.upscale(image, factor, timeout=timeout))

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
        return self._run(tasks.remove_background(image, timeout=timeout))

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
        return self._run(tasks.image2text(image, timeout=timeout))

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
        return self._run(
            tasks.enhance_prompt(
                prompt,
                versions=versions,
                max_length=max_length,
                language_id=language_id,
                timeout=timeout,
            )
        )

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
            The guide image; pass it as ``ControlNet(preprocessor, guide_image)``
            with the same ``preprocessor``: a preprocess type stands for its
            ControlNet name in :data:`diffusionmaster.tables.CONTROLNET_PREPROCESSOR_OF`
            (``depth`` is sent as ``depth_midas``, ``tile`` as ``tile_gaussian``...).

        Raises:
            InvalidArgumentError, TaskError, RequestTimeoutError, ...: as :meth:`upscale`.
        """
        return self._run(tasks.preprocess_controlnet(
            image, preprocessor, width=width, height=height,
            low_threshold_canny=low_threshold_canny, high_threshold_canny=high_threshold_canny,
            include_hands_and_face=include_hands_and_face, mask=mask, timeout=timeout,
        ))  # fmt: skip

    # -- many tasks at once ------------------------------------------------------------

    def _spec_of(self, method: Callable[..., Any]) -> Callable[..., TaskSpec[Any]] | None:
        """The spec function of ``method`` if it is a task method of this client."""
        name = getattr(method, "__name__", "")
        if getattr(method, "__self__", None) is not self or name not in tasks.SPECS:
            return None
        if getattr(method, "__func__", None) is not getattr(Client, name, None):
            return None  # a subclass overrode it: run the override as it is
        return tasks.SPECS[name]

    def _start_future(
        self,
        future: Future[Any],
        spec: TaskSpec[Any],
        *,
        meters: tuple[UsageMeter, ...] = (),
        on_done: Callable[[], object] | None = None,
    ) -> None:
        """Run ``spec`` for a running ``future``, without a thread; settle it when done."""

        def settle(call: Call[Any] | None, error: BaseException | None = None) -> None:
            if call is not None:
                error = call.error()
            if on_done is not None:
                on_done()
            if error is not None:
                future.set_exception(error)
            else:
                future.set_result(spec.ready if call is None else call.outcome())

        try:
            end = self._deadline(spec.timeout)
        except BaseException as exc:
            settle(None, exc)
            return
        if spec.is_ready:
            settle(None)
            return
        self._start(spec, end, meters).add_done_callback(settle)

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

        A task method of this client (``text2img``, ``upscale``, ``upload_image``...)
        occupies no thread while its task runs: its uploads and its task are chained
        onto the reader, so thousands can be in flight (see also :meth:`batch`). Its
        arguments are checked at once; a bad one fails the Future, and nothing is
        sent. Any other callable (and a call with ``on_image``, which runs in the
        calling thread) runs on a pool of worker threads (``diffusionmaster-worker``,
        up to 32) created on first use and stopped by :meth:`close`. Callbacks added
        with ``Future.add_done_callback`` run on a thread of the client
        (``diffusionmaster-events``): keep them short, and use ``submit`` rather than
        a blocking call there (which raises :class:`~diffusionmaster.ReentrancyError`).

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
        spec_of = self._spec_of(method)
        if spec_of is not None and "on_image" not in kwargs:
            future: Future[T] = Future()
            future.set_running_or_notify_cancel()
            try:
                spec = spec_of(*args, **kwargs)
            except Exception as exc:
                future.set_exception(exc)
                return future
            self._start_future(future, spec)
            return future
        with self._lock:
            if self._closed:
                raise ClientClosedError("the client is closed")
            if self._executor is None:
                self._executor = ThreadPoolExecutor(
                    max_workers=32, thread_name_prefix="diffusionmaster-worker"
                )
            return self._executor.submit(method, *args, **kwargs)

    def batch(self, max_in_flight: int = 64) -> Batch:
        """A :class:`~diffusionmaster.Batch` of tasks with at most ``max_in_flight`` in flight.

        Example::

            with client.batch(max_in_flight=200) as batch:
                for prompt in prompts:
                    batch.submit(client.text2img, prompt, seed=7)
                for future in batch.as_completed():
                    if future.exception() is None:
                        future.result()[0].save("out/")
            print(batch.usage.cost)

        Tasks not yet sent are cancelled when the client closes.

        Raises:
            InvalidArgumentError: ``max_in_flight`` is not an integer >= 1.
            ClientClosedError: the client is closed.
        """
        batch = Batch(self, max_in_flight)
        with self._lock:
            if self._closed:
                raise ClientClosedError("the client is closed")
            self._batches.add(batch)
        return batch

    def map(
        self,
        method: Callable[..., T],
        *iterables: Iterable[Any],
        max_in_flight: int = 64,
        ordered: bool = True,
        return_exceptions: bool = False,
        timeout: float | None = None,
        **options: Any,
    ) -> Iterator[T]:
        """Run ``method`` over the arguments of ``iterables``, like :meth:`Executor.map`.

        Every call is queued at once (arguments checked now) and at most
        ``max_in_flight`` are in flight; results are yielded in input order (or,
        with ``ordered=False``, as they complete). Stopping the iteration early
        (or closing the client) cancels the tasks not yet sent. Example::

            for images in client.map(client.text2img, prompts, number_results=2):
                images[0].save("out/")

        Args:
            method: a task method of this client.
            *iterables: the positional arguments, one iterable per parameter.
            max_in_flight: the most tasks on the wire at once.
            ordered: yield in input order (True) or in completion order.
            return_exceptions: yield a failed task's exception instead of raising it.
            timeout: seconds for the whole iteration (None: no limit).
            **options: keyword arguments passed to every call.

        Raises:
            InvalidArgumentError: ``method`` is not a task method of this client.
            TimeoutError: ``timeout`` passed.
        """
        batch = self.batch(max_in_flight)
        futures = [batch.submit(method, *args, **options) for args in zip(*iterables, strict=False)]
        end = None if timeout is None else time.monotonic() + timeout

        def left() -> float | None:
            return None if end is None else max(0.0, end - time.monotonic())

        def results() -> Iterator[T]:
            try:
                source = futures if ordered else batch.as_completed(left())
                for future in source:
                    if return_exceptions:
                        concurrent.futures.wait([future], left())
                        error = future.exception(0) if future.done() else None
                        yield error if error is not None else future.result(left())  # type: ignore[misc]
                    else:
                        yield future.result(left())
            finally:
                batch.cancel()

        return results()
