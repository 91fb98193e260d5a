"""The wire protocol (../shared/protocol.md): message classes, the converter,
``encode`` and ``decode``. Pure: no sockets, no threads, no clocks.

Every frame is one JSON object. Requests and replies are wrapped in one
top-level key naming the message (``{"newTask": {...}}``); errors are flat
(``{"error": true, ...}``) and the heartbeat is ``{"ping": true}`` /
``{"pong": true}``.

The message classes below are snake_case attrs classes; each field's wire name
is kept in its metadata (``wire("taskUUID")``) and read by this module's own
:data:`converter` (never cattrs' global one). Optional fields left at ``None``
are omitted from the frame.

Choices where protocol.md leaves a point open (tested in tests/test_protocol.py):

- **Directions.** ``newUpscaleGan``, ``newRemoveBackground`` and
  ``newPreProcessControlNet`` name both a request and its reply, so there are two
  decoders: :func:`decode` reads server frames (what the client receives) and
  :func:`decode_request` reads client frames (what a server receives).
- **Replies of the upscale and background-removal tasks** have the shape of
  ``newImages`` and decode to the same :class:`ImagesResult`, whose ``kind`` keeps
  the top-level key.
- **ControlNet preprocess replies** decode to :class:`PreprocessResult` (the Go
  shape); a ``newImages`` frame for that task decodes to :class:`ImagesResult`,
  and the client accepts either (house rule 8).
- **Strict primitives.** A field typed ``str`` must be a JSON string, ``int`` a
  JSON integer (``true`` is not an integer), ``float`` any JSON number, ``bool``
  a JSON boolean. Nothing is coerced: ``null`` for a required field is an error.
  ``null`` for an optional field reads as absent.
- **Unknown frames and fields.** A frame whose top-level key is unknown decodes
  to :class:`Unknown` (the client logs it at DEBUG and goes on); unknown fields
  inside a known frame are ignored. An error frame's ``errorId`` that is not an
  integer is kept as ``None`` (only the message matters then).
- **Malformed input** (invalid JSON, a frame that is not an object, a known
  frame missing a required field or with a field of the wrong type) raises
  :class:`~diffusionmaster.errors.ProtocolError` naming the frame and the field.
- **offset** is always sent (0 unless paging), like every official SDK.
- **Large frames** (speed only; the results are the same): :func:`encode` copies
  long strings that need no escaping (base64 uploads) into the frame as they are,
  and :func:`decode`, given a large frame as UTF-8 bytes, cuts the
  ``imageBase64Data`` strings out before parsing the rest (``_load_large``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any, ClassVar, TypeVar, Union

import attrs
import cattrs
from cattrs.gen import make_dict_structure_fn, make_dict_unstructure_fn, override

from .errors import ProtocolError

__all__ = [
    "ControlNetItem",
    "Event",
    "ImageItem",
    "ImageTask",
    "ImageUpload",
    "ImagesResult",
    "LoraItem",
    "NewConnection",
    "Ping",
    "Pong",
    "PreprocessControlNet",
    "PreprocessResult",
    "PromptEnhance",
    "RemoveBackground",
    "Request",
    "ReverseImageClip",
    "ServerError",
    "SessionEstablished",
    "TextItem",
    "TextsResult",
    "Unknown",
    "UploadResult",
    "UpscaleGan",
    "converter",
    "decode",
    "decode_request",
    "encode",
]

T = TypeVar("T")


def wire(name: str, default: Any = attrs.NOTHING, **kwargs: Any) -> Any:
    """An attrs field whose wire name is ``name``."""
    return attrs.field(default=default, metadata={"wire": name}, **kwargs)


def opt(name: str, **kwargs: Any) -> Any:
    """An optional attrs field (default None, omitted from frames) named ``name`` on the wire."""
    return wire(name, None, **kwargs)


# ---------------------------------------------------------------------------
# Requests (client -> server)
# ---------------------------------------------------------------------------


@attrs.frozen
class NewConnection:
    """Authenticate; with ``connection_session_uuid`` set, resume that session (§2)."""

    KEY: ClassVar[str] = "newConnection"
    api_key: str = wire("apiKey", repr=False)
    connection_session_uuid: str | None = opt("connectionSessionUUID")


@attrs.frozen
class LoraItem:
    """One LoRA of a ``newTask`` (§3)."""

    model_id: str = wire("modelId")
    weight: float = wire("weight")


@attrs.frozen
class ControlNetItem:
    """One ControlNet of a ``newTask`` (§3)."""

    preprocessor: str = wire("preprocessor")
    weight: float = wire("weight")
    guide_image_uuid: str | None = opt("guideImageUUID")
    guide_image_url: str | None = opt("guideImageUrl")
    start_step: int | None = opt("startStep")
    end_step: int | None = opt("endStep")
    start_step_percentage: float | None = opt("startStepPercentage")
    end_step_percentage: float | None = opt("endStepPercentage")
    control_mode: str | None = opt("controlMode")
    low_threshold_canny: int | None = opt("lowThresholdCanny")
    high_threshold_canny: int | None = opt("highThresholdCanny")


@attrs.frozen
class ImageTask:
    """``newTask``: text-to-image, image-to-image, inpainting, ControlNet (§3)."""

    KEY: ClassVar[str] = "newTask"
    task_uuid: str = wire("taskUUID")
    task_type: int = wire("taskType")
    prompt_text: str = wire("promptText")
    number_results: int = wire("numberResults")
    model_id: int | str = wire("modelId")
    size_id: int = wire("sizeId")
    offset: int = wire("offset", 0)
    steps: int | None = opt("steps")
    g_scale: float | None = opt("gScale")
    seed: int | None = opt("seed")
    use_cache: bool | None = opt("useCache")
    scheduler_id: int | None = opt("schedulerId")
    style_id: int | None = opt("styleId")
    clip_skip: int | None = opt("clipSkip")
    prompt_language_id: int | None = opt("promptLanguageId")
    check_nsfw: bool | None = opt("checkNsfw")
    use_prompt_weighting: bool | None = opt("usePromptWeighting")
    return_base64_image: bool | None = opt("returnBase64Image")
    image_initiator_uuid: str | None = opt("imageInitiatorUUID")
    image_mask_initiator_uuid: str | None = opt("imageMaskInitiatorUUID")
    lora: list[LoraItem] | None = opt("lora")
    control_net: list[ControlNetItem] | None = opt("controlNet")


@attrs.frozen
class ImageUpload:
    """``newImageUpload`` (§4): ``image_base64`` is a data URI or plain base64."""

    KEY: ClassVar[str] = "newImageUpload"
    task_uuid: str = wire("taskUUID")
    image_base64: str = wire("imageBase64", repr=False)
    task_type: int = wire("taskType", 7)


@attrs.frozen
class ReverseImageClip:
    """``newReverseImageClip``: image to text (§5)."""

    KEY: ClassVar[str] = "newReverseImageClip"
    task_uuid: str = wire("taskUUID")
    image_uuid: str = wire("imageUUID")


@attrs.frozen
class UpscaleGan:
    """``newUpscaleGan`` request: upscale by 2, 3 or 4 (§5)."""

    KEY: ClassVar[str] = "newUpscaleGan"
    task_uuid: str = wire("taskUUID")
    image_uuid: str = wire("imageUUID")
    upscale_factor: int = wire("upscaleFactor")


@attrs.frozen
class RemoveBackground:
    """``newRemoveBackground`` request (§5)."""

    KEY: ClassVar[str] = "newRemoveBackground"
    task_uuid: str = wire("taskUUID")
    image_uuid: str = wire("imageUUID")
    task_type: int = wire("taskType", 8)


@attrs.frozen
class PromptEnhance:
    """``newPromptEnhance`` (§5)."""

    KEY: ClassVar[str] = "newPromptEnhance"
    task_uuid: str = wire("taskUUID")
    prompt: str = wire("prompt")
    prompt_max_length: int = wire("promptMaxLength", 380)
    prompt_versions: int = wire("promptVersions", 1)
    prompt_language_id: int | None = opt("promptLanguageId")


@attrs.frozen
class PreprocessControlNet:
    """``newPreProcessControlNet`` request (§5)."""

    KEY: ClassVar[str] = "newPreProcessControlNet"
    task_uuid: str = wire("taskUUID")
    pre_processor_type: str = wire("preProcessorType")
    guide_image_uuid: str = wire("guideImageUUID")
    task_type: int = wire("taskType", 11)
    width: int | None = opt("width")
    height: int | None = opt("height")
    low_threshold_canny: int | None = opt("lowThresholdCanny")
    high_threshold_canny: int | None = opt("highThresholdCanny")
    include_hands_and_face_open_pose: bool | None = opt("includeHandsAndFaceOpenPose")
    guide_image_mask_uuid: str | None = opt("guideImageMaskUUID")


@attrs.frozen
class Ping:
    """The heartbeat request ``{"ping": true}``."""


Request = Union[
    NewConnection,
    ImageTask,
    ImageUpload,
    ReverseImageClip,
    UpscaleGan,
    RemoveBackground,
    PromptEnhance,
    PreprocessControlNet,
    Ping,
]

# ---------------------------------------------------------------------------
# Events (server -> client)
# ---------------------------------------------------------------------------


@attrs.frozen
class SessionEstablished:
    """``newConnectionSessionUUID``: authentication succeeded (§2.1)."""

    KEY: ClassVar[str] = "newConnectionSessionUUID"
    connection_session_uuid: str = wire("connectionSessionUUID")


@attrs.frozen
class ServerError:
    """A flat error frame (§6). Without ``task_uuid`` it concerns the connection."""

    error_message: str = wire("errorMessage", "")
    error_id: int | None = opt("errorId")
    task_uuid: str | None = opt("taskUUID")


@attrs.frozen
class Pong:
    """The heartbeat reply ``{"pong": true}``."""


@attrs.frozen
class ImageItem:
    """One image of a ``newImages`` (or upscale / background-removal) reply."""

    task_uuid: str = wire("taskUUID")
    image_uuid: str = wire("imageUUID")
    image_src: str | None = opt("imageSrc")
    nsfw: bool | None = opt("bNSFWContent")
    cost: float | None = opt("cost")
    image_alt_text: str | None = opt("imageAltText")
    image_base64_data: str | None = opt("imageBase64Data", repr=False)


@attrs.frozen
class ImagesResult:
    """Images for one or more tasks (``newImages``, ``newUpscaleGan``, ``newRemoveBackground``)."""

    KEYS: ClassVar[tuple[str, ...]] = ("newImages", "newUpscaleGan", "newRemoveBackground")
    images: list[ImageItem] = wire("images")
    total_available_results: int | None = opt("totalAvailableResults")
    kind: str = attrs.field(default="newImages", metadata={"wire": None})


@attrs.frozen
class UploadResult:
    """``newUploadedImageUUID``: an upload was stored (§4)."""

    KEY: ClassVar[str] = "newUploadedImageUUID"
    task_uuid: str = wire("taskUUID")
    new_image_uuid: str = wire("newImageUUID")
    new_image_src: str | None = opt("newImageSrc")


@attrs.frozen
class TextItem:
    """One text of a caption or prompt-enhancer reply."""

    task_uuid: str = wire("taskUUID")
    text: str = wire("text")


@attrs.frozen
class TextsResult:
    """Texts for one or more tasks (``newReverseClip``, ``newPromptEnhancer``)."""

    KEYS: ClassVar[tuple[str, ...]] = ("newReverseClip", "newPromptEnhancer")
    texts: list[TextItem] = wire("texts")
    kind: str = attrs.field(default="newReverseClip", metadata={"wire": None})


@attrs.frozen
class PreprocessResult:
    """``newPreProcessControlNet`` reply, in the Go SDK's shape (§5)."""

    KEY: ClassVar[str] = "newPreProcessControlNet"
    task_uuid: str = wire("taskUUID")
    new_image_uuid: str = wire("newImageUUID")
    new_image_src: str | None = opt("newImageSrc")
    init_image_uuid: str | None = opt("initImageUUID")
    nsfw: bool | None = opt("nNsfwContent")


@attrs.frozen
class Unknown:
    """A frame this version does not know (ignored by the client, logged at DEBUG)."""

    key: str
    payload: Any = attrs.field(repr=False)


@attrs.frozen
class Invalid:
    """A frame (or items of one) that cannot be decoded, but names the tasks it was for.

    ``valid`` is the rest of the frame when only some of its items were bad: the
    images (or texts) that did decode, for the other tasks (None when nothing did).
    """

    error: ProtocolError
    task_uuids: tuple[str, ...]
    valid: ImagesResult | TextsResult | None = None


Event = Union[
    Invalid,
    SessionEstablished,
    ServerError,
    Pong,
    ImagesResult,
    UploadResult,
    TextsResult,
    PreprocessResult,
    Unknown,
]

# ---------------------------------------------------------------------------
# The converter
# ---------------------------------------------------------------------------


def _strict(name: str, *types: type[Any]) -> Callable[[Any, Any], Any]:
    # Exact types: what json.loads makes (True is a bool, never an int).
    def hook(value: Any, _: Any) -> Any:
        if type(value) in types:
            return value
        raise TypeError(f"expected {name}, got {type(value).__name__} {value!r:.40}")

    return hook


def _number(value: Any, _: Any) -> float:
    if type(value) is float:
        return value
    if type(value) is int:
        return float(value)
    raise TypeError(f"expected number, got {type(value).__name__} {value!r:.40}")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _model_id(value: Any, _: Any) -> int | str:
    if _is_int(value) or isinstance(value, str):
        return value  # type: ignore[no-any-return]
    raise TypeError(f"expected integer or string, got {type(value).__name__} {value!r:.40}")


converter = cattrs.Converter(detailed_validation=False)
converter.register_structure_hook(str, _strict("string", str))
converter.register_structure_hook(int, _strict("integer", int))
converter.register_structure_hook(float, _number)
converter.register_structure_hook(bool, _strict("boolean", bool))
converter.register_structure_hook(int | str, _model_id)

_MESSAGE_CLASSES: tuple[type[Any], ...] = (
    NewConnection, LoraItem, ControlNetItem, ImageTask, ImageUpload, ReverseImageClip,
    UpscaleGan, RemoveBackground, PromptEnhance, PreprocessControlNet,
    SessionEstablished, ServerError, ImageItem, ImagesResult, UploadResult, TextItem,
    TextsResult, PreprocessResult,
)  # fmt: skip


#: The pseudo-field that carries a frame's top-level key into a result class's ``kind``
#: (cheaper than rebuilding the result after structuring it).
_KIND = "@kind"


def _register(cls: type[Any]) -> None:
    """Register the hooks of one message class, with its wire names."""
    fields = attrs.fields(cls)
    unstructure: dict[str, Any] = {
        f.name: override(rename=f.metadata["wire"], omit_if_default=f.default is None)
        if f.metadata["wire"]
        else override(omit=True)
        for f in fields
    }
    structure: dict[str, Any] = {
        f.name: override(rename=f.metadata["wire"]) if f.metadata["wire"] else override(omit=True)
        for f in fields
    }
    if "kind" in structure:  # the frame's top-level key, put in by _decode as "@kind"
        structure["kind"] = override(rename=_KIND)
    _UNSTRUCTURE[cls] = make_dict_unstructure_fn(cls, converter, **unstructure)
    _STRUCTURE[cls] = make_dict_structure_fn(cls, converter, **structure)
    converter.register_unstructure_hook(cls, _UNSTRUCTURE[cls])
    converter.register_structure_hook(cls, _STRUCTURE[cls])


# The hooks of the message classes, called directly by encode and decode (the
# converter's dispatch would look them up again for every frame).
_UNSTRUCTURE: dict[type[Any], Callable[[Any], dict[str, Any]]] = {}
_STRUCTURE: dict[type[Any], Callable[[Any, Any], Any]] = {}
for _cls in _MESSAGE_CLASSES:
    _register(_cls)

# ---------------------------------------------------------------------------
# encode / decode
# ---------------------------------------------------------------------------


#: Strings at least this long are copied into frames as they are when they need no
#: escaping (see :func:`encode`).
VERBATIM_MIN = 64 * 1024
_JSON_SPECIAL = (*map(chr, range(0x20)), '"', "\\")  # what JSON must escape in a string
_PLACEHOLDER = "@@verbatim-{}@@"


#: Made once: ``json.dumps`` with options builds a new encoder for every frame.
_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)


def _verbatim(value: str) -> bool:
    """True when ``value`` can stand in a JSON string as it is (nothing to escape)."""
    # 34 one-character substring searches (memchr-speed) beat json.dumps's
    # character-by-character escaping by about 5x on a 14 MB base64 upload.
    return not any(special in value for special in _JSON_SPECIAL)


def encode(message: Request) -> str:
    """Serialise a request into the text of one frame.

    Large strings (base64 uploads) that need no escaping are placed in the frame
    as they are instead of going through ``json.dumps``; the text is the same.

    Args:
        message: any request class of this module.

    Returns:
        The JSON text, e.g. ``{"newTask":{"taskUUID":"...",...}}``.
    """
    if isinstance(message, Ping):
        return '{"ping":true}'
    body = _UNSTRUCTURE[type(message)](message)
    large = {
        key: value
        for key, value in body.items()
        if isinstance(value, str) and len(value) >= VERBATIM_MIN and _verbatim(value)
    }
    if not large:
        return _ENCODER.encode({message.KEY: body})
    placeholders = {}
    for index, (key, value) in enumerate(large.items()):
        placeholder = _PLACEHOLDER.format(index)
        placeholders[f'"{placeholder}"'] = value
        body[key] = placeholder
    text = _ENCODER.encode({message.KEY: body})
    parts: list[str] = []
    for quoted, value in placeholders.items():
        if text.count(quoted) != 1:  # another field holds the placeholder text itself
            body.update(large)
            return _ENCODER.encode({message.KEY: body})
        head, text = text.split(quoted, 1)
        parts += (head, '"', value, '"')
    parts.append(text)
    return "".join(parts)


_EVENT_KEYS: dict[str, type[Any]] = {
    SessionEstablished.KEY: SessionEstablished,
    UploadResult.KEY: UploadResult,
    PreprocessResult.KEY: PreprocessResult,
    **{key: ImagesResult for key in ImagesResult.KEYS},
    **{key: TextsResult for key in TextsResult.KEYS},
}

_REQUEST_KEYS: dict[str, type[Any]] = {
    cls.KEY: cls
    for cls in (
        NewConnection, ImageTask, ImageUpload, ReverseImageClip, UpscaleGan,
        RemoveBackground, PromptEnhance, PreprocessControlNet,
    )
}  # fmt: skip


def _load(text: str | bytes | bytearray) -> dict[str, Any]:
    try:
        frame = json.loads(text)
    except (ValueError, TypeError) as exc:
        raise ProtocolError(f"malformed JSON frame: {exc}") from exc
    if not isinstance(frame, dict):
        raise ProtocolError(f"frame is a JSON {type(frame).__name__}, expected an object")
    return frame


def _structure(key: str, body: Any, cls: type[T]) -> T:
    if not isinstance(body, dict):
        raise ProtocolError(f"{key}: expected an object, got {type(body).__name__}")
    try:
        return _STRUCTURE[cls](body, cls)  # type: ignore[no-any-return]
    except KeyError as exc:
        raise ProtocolError(f"{key}: missing required field {exc.args[0]!r}") from exc
    except (TypeError, ValueError, AttributeError) as exc:
        raise ProtocolError(f"{key}: invalid field: {exc}") from exc


def _error(frame: dict[str, Any]) -> ServerError:
    error_id = frame.get("errorId")
    task_uuid = frame.get("taskUUID")
    message = frame.get("errorMessage")
    if not isinstance(message, str):  # never str() a structure: it may be huge or deep
        message = "" if message is None else f"(errorMessage of type {type(message).__name__})"
    return ServerError(
        error_message=message,
        error_id=error_id if _is_int(error_id) else None,
        task_uuid=task_uuid if isinstance(task_uuid, str) else None,
    )


#: Undecoded frames at least this long may take :func:`_load_large`'s path.
LARGE_FRAME = 64 * 1024
_BASE64_FIELD = b'"imageBase64Data"'
_BASE64_VALUE = re.compile(rb'[ \t\n\r]*:[ \t\n\r]*"')
_BASE64_PLACEHOLDER = "@@base64-{}@@"


def _load_large(data: bytes | bytearray) -> dict[str, Any] | None:
    """Parse a large result frame without running the JSON parser over its base64.

    Nearly all of a large frame is ``imageBase64Data`` strings, which need no
    unescaping: each is cut out (located with substring searches), decoded once as
    ASCII, and put back into the parsed rest of the frame. Compared with decoding
    the whole frame to ``str`` and parsing it, this allocates one copy of the base64
    instead of two and skips scanning it character by character (bench "large").

    Returns:
        The frame, exactly as ``json.loads`` would give it; or None when the frame
        is not of that shape (a field escaped, not ASCII, or elsewhere than in
        ``images[]``): the caller then parses it in full.
    """
    spans: list[tuple[int, int]] = []
    found = data.find(_BASE64_FIELD)
    while found >= 0:
        match = _BASE64_VALUE.match(data, found + len(_BASE64_FIELD))  # : and the quote
        if match is None:
            return None
        start = match.end()
        end = data.find(b'"', start)
        if end < 0 or data.find(b"\\", start, end) >= 0:
            return None
        spans.append((start, end))
        found = data.find(_BASE64_FIELD, end)
    if not spans:
        return None
    with memoryview(data) as view:
        try:
            values = [str(view[start:end], "ascii") for start, end in spans]
        except UnicodeDecodeError:
            return None
        pieces: list[bytes | memoryview] = []
        last = 0
        for index, (start, end) in enumerate(spans):
            pieces += (view[last:start], _BASE64_PLACEHOLDER.format(index).encode())
            last = end
        pieces.append(view[last:])
        rest = b"".join(pieces)
        del pieces
    frame = _load(rest)
    body = next(iter(frame.values()), None) if len(frame) == 1 else None
    images = body.get("images") if isinstance(body, dict) else None
    if not isinstance(images, list):
        return None
    placed = 0
    for item in images:
        if (
            isinstance(item, dict)
            and placed < len(values)
            and item.get("imageBase64Data") == _BASE64_PLACEHOLDER.format(placed)
        ):
            item["imageBase64Data"] = values[placed]
            placed += 1
    return frame if placed == len(values) else None


def decode(text: str | bytes | bytearray) -> Event:
    """Parse one frame received from the server. Never raises anything but ProtocolError.

    Any input is safe: JSON nested too deep to parse, numbers too long to convert,
    an allocation that fails, and wrong types at any level all end in a
    :class:`~diffusionmaster.errors.ProtocolError` (or an :class:`Invalid`), so a
    hostile frame costs at most that frame.

    Args:
        text: the frame's text (``str``, or UTF-8 ``bytes`` / ``bytearray``).

    Returns:
        An event: :class:`SessionEstablished`, :class:`ServerError`, :class:`Pong`,
        :class:`ImagesResult`, :class:`UploadResult`, :class:`TextsResult`,
        :class:`PreprocessResult`, or :class:`Unknown` for a frame it does not know.
        :class:`Invalid` for a frame that cannot be decoded but names tasks (each
        ``taskUUID`` it holds), with the images or texts that did decode, if any:
        one bad item costs only the task it names.

    Raises:
        ProtocolError: a frame that cannot be decoded and names no task.
    """
    try:
        return _decode(text)
    except ProtocolError as exc:
        error = exc
    except Exception as exc:  # RecursionError (deep nesting), MemoryError, ...: that frame only
        error = ProtocolError(f"frame cannot be decoded: {type(exc).__name__}: {exc!s:.200}")
        error.__cause__ = exc
    _release(error)
    try:
        named = _task_uuids_in(text)
    except Exception:  # pragma: no cover - the search itself failed (no memory): name nothing
        named = ()
    if named:
        return Invalid(error, named)
    raise error


def _release(error: BaseException) -> None:
    """Drop the tracebacks of ``error`` and its causes: they would keep the frame alive."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        current.__traceback__ = None
        current = current.__cause__ or current.__context__


#: At most this many task UUIDs are taken from a frame that cannot be decoded.
MAX_NAMED = 1024
_TASK_UUID = re.compile(r'"taskUUID"[ \t\n\r]*:[ \t\n\r]*"([^"\\]{1,128})"')
_TASK_UUID_BYTES = re.compile(_TASK_UUID.pattern.encode())


def _task_uuids_in(text: str | bytes | bytearray) -> tuple[str, ...]:
    """The distinct ``taskUUID`` string values in the raw text of a frame, in order.

    Used only for frames that cannot be parsed or structured, to fail the tasks
    they were meant for at once rather than at their timeout.
    """
    found: dict[str, None] = {}
    if isinstance(text, str):
        for match in _TASK_UUID.finditer(text):
            found[match.group(1)] = None
            if len(found) >= MAX_NAMED:
                break
    else:
        for raw in _TASK_UUID_BYTES.finditer(text):
            try:
                found[raw.group(1).decode("utf-8")] = None
            except UnicodeDecodeError:
                continue
            if len(found) >= MAX_NAMED:
                break
    return tuple(found)


def _decode(text: str | bytes | bytearray) -> Event:
    frame = None
    if not isinstance(text, str) and len(text) >= LARGE_FRAME:
        frame = _load_large(text)
    if frame is None:
        frame = _load(text)
    if frame.get("error"):
        return _error(frame)
    if frame.get("pong") is True:
        return Pong()
    if len(frame) == 1:
        key, body = next(iter(frame.items()))
        cls = _EVENT_KEYS.get(key)
        if cls is not None:
            listing = cls is ImagesResult or cls is TextsResult
            if listing and isinstance(body, dict):
                body[_KIND] = key  # a server's own "@kind" is overwritten: the key decides
            try:
                return _structure(key, body, cls)  # type: ignore[no-any-return]
            except ProtocolError as exc:
                if listing:
                    return _partial(key, body, cls, exc)
                raise
    key = next(iter(frame), "")
    return Unknown(key=key, payload=frame)


def _partial(
    key: str, body: Any, cls: type[ImagesResult] | type[TextsResult], error: ProtocolError
) -> Invalid:
    """Decode a list frame item by item, after decoding it whole failed.

    Returns the items that decode (``Invalid.valid``) and the tasks named by those
    that do not. Raises ``error`` when the frame itself (not an item) is bad: the
    caller then names the tasks from the raw text.
    """
    field, item_cls = ("images", ImageItem) if cls is ImagesResult else ("texts", TextItem)
    items = body.get(field) if isinstance(body, dict) else None
    if not isinstance(items, list):
        raise error
    shell: Any = _structure(key, {**body, field: []}, cls)  # the frame's own fields; raises if bad
    good: list[Any] = []
    bad: dict[str, None] = {}
    problems: list[str] = []
    for index, item in enumerate(items):
        try:
            good.append(_structure(f"{key}.{field}[{index}]", item, item_cls))
        except ProtocolError as exc:
            task_uuid = item.get("taskUUID") if isinstance(item, dict) else None
            if isinstance(task_uuid, str):
                bad[task_uuid] = None
            problems.append(str(exc))
    summary = "; ".join(problems[:3]) + (
        f"; and {len(problems) - 3} more" if len(problems) > 3 else ""
    )
    invalid = ProtocolError(
        f"{key}: {len(problems)} of {len(items)} items cannot be read: {summary}"
    )
    valid = attrs.evolve(shell, **{field: good}) if good else None
    if not bad and valid is None:
        raise invalid
    return Invalid(invalid, tuple(bad), valid)


def decode_request(text: str | bytes) -> Request | Unknown:
    """Parse one frame sent by a client (the server's side of :func:`decode`).

    Returns:
        A request class of this module, or :class:`Unknown`.

    Raises:
        ProtocolError: malformed JSON, or a known frame with a missing or mistyped field.
    """
    frame = _load(text)
    if frame.get("ping") is True:
        return Ping()
    if len(frame) == 1:
        key, body = next(iter(frame.items()))
        cls = _REQUEST_KEYS.get(key)
        if cls is not None:
            return _structure(key, body, cls)  # type: ignore[no-any-return]
    return Unknown(key=next(iter(frame), ""), payload=frame)
