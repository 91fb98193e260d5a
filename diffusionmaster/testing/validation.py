"""Pure validation of the frames a client sends (protocol.md §2-§5).

This module is the emulator's conformance checker. It knows nothing about
sockets, threads or sessions: :func:`decode_frame` and :func:`message_key` turn
one WebSocket message into a frame and its message key, and :func:`validate_task`
turns the body of a task message into a small immutable request (see
:mod:`~diffusionmaster.testing.messages`), or raises ``FrameError``.

Every field is checked on its own (presence, JSON type, range, table id), then
the fields are checked against each other (``taskType`` against the images and
ControlNet items it needs), then referenced image UUIDs are looked up. All
problems found are reported at once, joined by ``"; "``, each written as
``"<field>: <what is wrong>"`` (nested fields as ``controlNet[0].weight``).
``null`` for an optional field means "absent", because the official SDKs send
``null`` for unset fields (``useCache``, ``lora``, ``controlNet``,
``promptLanguageId``). JSON ``true``/``false`` are never accepted as numbers.

The error ids are listed in :class:`~diffusionmaster.testing.messages.ErrorId`.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import math
import re
import uuid
from collections.abc import Callable, Mapping
from typing import Any, NoReturn

from diffusionmaster.tables import (
    CONTROLNET_PREPROCESSORS,
    CONTROLNET_PREPROCESSORS_SDXL,
    LANGUAGE_IDS,
    PREPROCESSOR_TYPES,
    SIZES,
    ControlMode,
    Model,
    Scheduler,
    Style,
)
from diffusionmaster.testing.messages import (
    MESSAGE_KEYS,
    CaptionRequest,
    ControlNetItem,
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

__all__ = ["decode_frame", "message_key", "read_task_uuid", "validate_task"]

logger = logging.getLogger("diffusionmaster.testing.validation")


# The taskType a task message may carry, when it carries one (§8.2).
_FIXED_TASK_TYPE = {
    "newImageUpload": 7,
    "newReverseImageClip": 4,
    "newUpscaleGan": 6,
    "newRemoveBackground": 8,
    "newPromptEnhance": 5,
    "newPreProcessControlNet": 11,
}
_GENERATE_TASK_TYPES = (1, 2, 3, 9, 10)
_DEFAULT_STEPS = 20  # protocol.md §3: "docs default 20"
# A CivitAI-style AIR model id, e.g. "civitai:132942@146296".
_AIR = re.compile(r"^[A-Za-z][A-Za-z0-9_-]*:[0-9]+@[0-9]+$")
_DATA_URI = re.compile(r"^data:([^;,]*)(;[^,]*)?,", re.ASCII)
_UPLOAD_MIME = {"", "image/png", "image/jpeg", "image/jpg", "image/webp"}


def _reject_constant(name: str) -> NoReturn:
    raise ValueError(f"{name} is not valid JSON")


def decode_frame(message: str | bytes) -> dict[str, Any]:
    """Parse one WebSocket message as a JSON object.

    Args:
        message: the message as received (text frames are ``str``).

    Returns:
        The parsed frame.

    Raises:
        FrameError: (400) a binary frame, invalid JSON (``NaN`` and ``Infinity``
            included), or a JSON value that is not an object.
    """
    if isinstance(message, bytes):
        raise FrameError(ErrorId.MALFORMED_FRAME, "frame: binary frames are not supported")
    try:
        frame = json.loads(message, parse_constant=_reject_constant)
    except ValueError as exc:
        raise FrameError(ErrorId.MALFORMED_FRAME, f"frame: invalid JSON ({exc})") from exc
    if not isinstance(frame, dict):
        raise FrameError(ErrorId.MALFORMED_FRAME, "frame: must be a JSON object")
    return frame


def message_key(frame: Mapping[str, Any]) -> str:
    """Return the one known message key of a frame.

    Unknown top-level keys beside it are logged at DEBUG and ignored.

    Raises:
        FrameError: (400) no known message key, or several.
    """
    keys = [key for key in frame if key in MESSAGE_KEYS]
    unknown = [key for key in frame if key not in MESSAGE_KEYS]
    if unknown:
        logger.debug("ignoring unknown top-level keys %s", unknown)
    if not keys:
        raise FrameError(
            ErrorId.MALFORMED_FRAME, f"frame: no known message key (got {sorted(frame)})"
        )
    if len(keys) > 1:
        raise FrameError(ErrorId.MALFORMED_FRAME, f"frame: several message keys {sorted(keys)}")
    return keys[0]


_MISSING: Any = object()


class _Checker:
    """Collects the problems of one message body; each ``get_*`` checks one field."""

    def __init__(self, body: Mapping[str, Any], image_exists: Callable[[str], bool]) -> None:
        self.body = body
        self.image_exists = image_exists
        self.problems: list[tuple[int, str]] = []
        # Field names read per checked object, to log the unknown ones (house rule 10).
        self.objects: list[tuple[str, Mapping[str, Any], set[str]]] = [("", body, {"taskUUID"})]

    def register(self, path: str, item: Mapping[str, Any]) -> None:
        self.objects.append((path, item, set()))

    def log_unknown(self, kind: str) -> None:
        for path, item, read in self.objects:
            unknown = sorted(set(item) - read)
            if unknown:
                logger.debug("%s: ignoring unknown fields %s%s", kind, path, unknown)

    def fail(self, field: str, what: str, error_id: int = ErrorId.INVALID_FIELD) -> None:
        self.problems.append((error_id, f"{field}: {what}"))

    def raw(self, field: str, required: bool, source: Mapping[str, Any] | None = None) -> Any:
        obj = self.body if source is None else source
        name = field.rsplit(".", 1)[-1]
        for _, item, read in self.objects:
            if item is obj:
                read.add(name)
        value = obj.get(name)
        if value is None:
            if required:
                self.fail(field, "required")
            return _MISSING
        return value

    def get_int(
        self, field: str, *, required: bool = False, low: int | None = None,
        high: int | None = None, source: Mapping[str, Any] | None = None,
    ) -> int | None:  # fmt: skip
        value = self.raw(field, required, source)
        if value is _MISSING:
            return None
        if type(value) is not int:  # bool is an int subclass: JSON true is not a number
            self.fail(field, f"must be an integer, got {json.dumps(value)}")
            return None
        if (low is not None and value < low) or (high is not None and value > high):
            self.fail(field, f"{value} is out of range ({_range(low, high)})")
            return None
        return value

    def get_number(
        self, field: str, *, low: float, high: float, required: bool = False,
        source: Mapping[str, Any] | None = None,
    ) -> float | None:  # fmt: skip
        value = self.raw(field, required, source)
        if value is _MISSING:
            return None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            self.fail(field, f"must be a number, got {json.dumps(value)}")
            return None
        if not (math.isfinite(value) and low <= value <= high):
            self.fail(field, f"{value} is out of range ({_range(low, high)})")
            return None
        return float(value)

    def get_bool(self, field: str) -> bool:
        value = self.raw(field, False)
        if value is _MISSING:
            return False
        if not isinstance(value, bool):
            self.fail(field, f"must be true or false, got {json.dumps(value)}")
            return False
        return value

    def get_str(
        self, field: str, *, required: bool = False, source: Mapping[str, Any] | None = None
    ) -> str | None:
        value = self.raw(field, required, source)
        if value is _MISSING:
            return None
        if not isinstance(value, str):
            self.fail(field, f"must be a string, got {json.dumps(value)}")
            return None
        return value

    def get_text(self, field: str) -> str | None:
        value = self.get_str(field, required=True)
        if value is not None and not value.strip():
            self.fail(field, "must not be empty")
            return None
        return value

    def get_choice(self, field: str, choices: Any, *, required: bool = False, **kw: Any) -> Any:
        getter = self.get_str if isinstance(next(iter(choices)), str) else self.get_int
        value = getter(field, required=required, **kw)
        if value is not None and value not in choices:
            self.fail(field, f"{json.dumps(value)} is not one of {_listing(choices)}")
            return None
        return value

    def get_image(
        self, field: str, *, required: bool = False, source: Mapping[str, Any] | None = None
    ) -> str | None:
        value = self.get_str(field, required=required, source=source)
        if value is None:
            return None
        if not _is_uuid(value):
            self.fail(field, f"{json.dumps(value)} is not a UUID")
            return None
        if not self.image_exists(value):
            self.fail(field, f"no image {value} on the server", ErrorId.IMAGE_NOT_FOUND)
            return None
        return value

    def get_list(self, field: str) -> list[Any]:
        value = self.raw(field, False)
        if value is _MISSING:
            return []
        if not isinstance(value, list):
            self.fail(field, f"must be a list, got {json.dumps(value)[:40]}")
            return []
        return value

    def get_task_type(self, kind: str) -> int | None:
        if kind == "newTask":
            return self.get_choice("taskType", _GENERATE_TASK_TYPES, required=True)  # type: ignore[no-any-return]
        expected = _FIXED_TASK_TYPE[kind]
        value = self.get_int("taskType")
        if value is not None and value != expected:
            self.fail("taskType", f"must be {expected} for {kind}, got {value}")
        return expected

    def raise_if_failed(self, task_uuid: str | None) -> None:
        if self.problems:
            error_id = self.problems[0][0]
            raise FrameError(error_id, "; ".join(text for _, text in self.problems), task_uuid)


def _range(low: float | None, high: float | None) -> str:
    if high is None:
        return f">= {low}"
    if low is None:
        return f"<= {high}"
    return f"{low}..{high}"


def _listing(choices: Any) -> str:
    values = sorted(int(c) if isinstance(c, int) else str(c) for c in choices)
    return ", ".join(json.dumps(v) for v in values)


def _is_uuid(value: str) -> bool:
    try:
        return str(uuid.UUID(value)) == value.lower()
    except ValueError:
        return False


def read_task_uuid(body: Any) -> str | None:
    """Return the ``taskUUID`` of a task body when it is a string, else None."""
    if isinstance(body, dict):
        value = body.get("taskUUID")
        if isinstance(value, str):
            return value
    return None


def validate_task(kind: str, body: Any, image_exists: Callable[[str], bool]) -> TaskRequest:
    """Validate the body of one task message.

    Args:
        kind: the message key, one of :data:`TASK_KEYS`.
        body: the value under that key, as parsed from JSON.
        image_exists: tells whether an image UUID is known to the server for
            the sender's API key.

    Returns:
        The validated request.

    Raises:
        FrameError: the body is invalid; ``task_uuid`` is set when it could be read.
    """
    task_uuid = read_task_uuid(body)
    if not isinstance(body, dict):
        raise FrameError(ErrorId.MALFORMED_FRAME, f"{kind}: must be a JSON object")
    check = _Checker(body, image_exists)
    if task_uuid is None:
        check.get_str("taskUUID", required=True)
    elif not _is_uuid(task_uuid) or uuid.UUID(task_uuid).version != 4:
        check.fail("taskUUID", f"{json.dumps(task_uuid)} is not a UUIDv4")
    task_type = check.get_task_type(kind)
    request = _VALIDATORS[kind](check, task_uuid or "", task_type)
    if logger.isEnabledFor(logging.DEBUG):
        check.log_unknown(kind)
    check.raise_if_failed(task_uuid)
    assert request is not None  # every validator returns a request when no problem was found
    return request


def _validate_generate(
    check: _Checker, task_uuid: str, task_type: int | None
) -> TaskRequest | None:
    prompt = check.get_text("promptText")
    number_results = check.get_int("numberResults", required=True, low=1)
    model = _check_model(check)
    size_id = check.get_choice("sizeId", SIZES, required=True)
    offset = check.get_int("offset", low=0)
    steps = check.get_int("steps", low=1)
    check.get_number("gScale", low=0, high=10)
    seed = check.get_int("seed", low=1)
    check.get_bool("useCache")
    check.get_choice("schedulerId", frozenset(Scheduler))
    check.get_choice("styleId", frozenset(Style))
    check.get_int("clipSkip", low=0, high=2)
    check.get_int("promptLanguageId", low=LANGUAGE_IDS.start, high=LANGUAGE_IDS.stop - 1)
    check_nsfw = check.get_bool("checkNsfw")
    check.get_bool("usePromptWeighting")
    return_base64 = check.get_bool("returnBase64Image")
    init_uuid = check.get_image("imageInitiatorUUID")
    mask_uuid = check.get_image("imageMaskInitiatorUUID")
    for index, item in enumerate(check.get_list("lora")):
        field = f"lora[{index}]"
        if not isinstance(item, dict):
            check.fail(field, "must be an object")
            continue
        check.register(field, item)
        air = check.get_str(f"{field}.modelId", required=True, source=item)
        if air is not None and not _AIR.match(air):
            check.fail(f"{field}.modelId", f"{json.dumps(air)} is not an AIR id like civitai:1@2")
        check.get_number(f"{field}.weight", low=0, high=1, required=True, source=item)
    controlnet = tuple(
        _check_controlnet_item(check, f"controlNet[{index}]", item, steps or _DEFAULT_STEPS, model)
        for index, item in enumerate(check.get_list("controlNet"))
    )
    # taskType against the fields it needs (§3); only when the fields themselves are valid
    # or absent, so one mistake is not reported twice.
    raw_init, raw_mask = (
        check.body.get("imageInitiatorUUID"),
        check.body.get("imageMaskInitiatorUUID"),
    )
    needs_init = task_type in (2, 3, 10)
    if task_type is not None:
        if needs_init and raw_init is None:
            check.fail("imageInitiatorUUID", f"required for taskType {task_type}")
        if not needs_init and raw_init is not None:
            check.fail("imageInitiatorUUID", f"not allowed with taskType {task_type}")
        if task_type == 3 and raw_mask is None:
            check.fail("imageMaskInitiatorUUID", "required for taskType 3")
        if task_type in (1, 2, 9) and raw_mask is not None:
            check.fail("imageMaskInitiatorUUID", f"not allowed with taskType {task_type}")
        if task_type in (9, 10) and not check.body.get("controlNet"):
            check.fail("controlNet", f"at least one item required for taskType {task_type}")
        if task_type in (1, 2, 3) and check.body.get("controlNet"):
            check.fail("controlNet", f"not allowed with taskType {task_type} (use 9 or 10)")
    if check.problems or None in (task_type, prompt, number_results, size_id):
        return None
    assert task_type is not None and prompt is not None and number_results is not None
    return GenerateRequest(
        task_uuid=task_uuid,
        task_type=task_type,
        prompt=prompt,
        number_results=number_results,
        size=SIZES[int(size_id)],
        seed=seed,
        offset=offset or 0,
        check_nsfw=check_nsfw,
        return_base64=return_base64,
        init_image_uuid=init_uuid,
        mask_image_uuid=mask_uuid,
        controlnet=tuple(item for item in controlnet if item is not None),
    )


def _check_model(check: _Checker) -> int | str | None:
    value = check.raw("modelId", True)
    if value is _MISSING:
        return None
    if type(value) is int:
        if value in frozenset(Model):
            return value
    elif isinstance(value, str):
        if _AIR.match(value):
            return value
        # The Go SDK sent table ids as strings ("18"): accepted when they name a model.
        if value.isascii() and value.isdigit() and int(value) in frozenset(Model):
            return int(value)
    else:
        check.fail("modelId", f"must be an integer or an AIR string, got {json.dumps(value)}")
        return None
    check.fail("modelId", f"{json.dumps(value)} is not a known model ({_listing(Model)} or AIR)")
    return None


def _check_controlnet_item(
    check: _Checker, field: str, item: Any, steps: int, model: int | str | None
) -> ControlNetItem | None:
    if not isinstance(item, dict):
        check.fail(field, "must be an object")
        return None
    check.register(field, item)
    names = CONTROLNET_PREPROCESSORS_SDXL if model == Model.SDXL_V1_0 else CONTROLNET_PREPROCESSORS
    preprocessor = check.get_choice(f"{field}.preprocessor", names, required=True, source=item)
    check.get_number(f"{field}.weight", low=0, high=1, source=item)
    start = check.get_int(f"{field}.startStep", low=0, high=steps, source=item)
    end = check.get_int(f"{field}.endStep", low=0, high=steps, source=item)
    start_pct = check.get_number(f"{field}.startStepPercentage", low=0, high=1, source=item)
    end_pct = check.get_number(f"{field}.endStepPercentage", low=0, high=1, source=item)
    if start is not None and end is not None and start > end:
        check.fail(f"{field}.startStep", f"{start} is after endStep {end}")
    if start_pct is not None and end_pct is not None and start_pct > end_pct:
        check.fail(f"{field}.startStepPercentage", f"{start_pct} is after endStepPercentage")
    given = {name for name, value in item.items() if value is not None}
    if {"startStep", "endStep"} & given and {"startStepPercentage", "endStepPercentage"} & given:
        check.fail(field, "use either startStep/endStep or the *StepPercentage pair, not both")
    guide = check.get_image(f"{field}.guideImageUUID", source=item)
    url = check.get_str(f"{field}.guideImageUrl", source=item)
    if url is not None and not url.startswith(("http://", "https://")):
        check.fail(f"{field}.guideImageUrl", "must be an http(s) URL")
    if item.get("guideImageUUID") is None and item.get("guideImageUrl") is None:
        check.fail(field, "guideImageUUID or guideImageUrl required")
    elif item.get("guideImageUUID") is not None and item.get("guideImageUrl") is not None:
        check.fail(field, "give guideImageUUID or guideImageUrl, not both")
    check.get_choice(f"{field}.controlMode", frozenset(m.value for m in ControlMode), source=item)
    low = check.get_int(f"{field}.lowThresholdCanny", low=0, high=255, source=item)
    high = check.get_int(f"{field}.highThresholdCanny", low=0, high=255, source=item)
    for name in ("lowThresholdCanny", "highThresholdCanny"):
        if item.get(name) is not None and preprocessor not in (None, "canny"):
            check.fail(f"{field}.{name}", "only valid with preprocessor canny")
    if low is not None and high is not None and low > high:
        check.fail(f"{field}.lowThresholdCanny", f"{low} is above highThresholdCanny {high}")
    if preprocessor is None:
        return None
    return ControlNetItem(preprocessor=preprocessor, guide_image_uuid=guide)


def _validate_upload(check: _Checker, task_uuid: str, task_type: int | None) -> TaskRequest | None:
    text = check.get_str("imageBase64", required=True)
    if text is None:
        return None
    match = _DATA_URI.match(text)
    if match:
        mime, params = match.group(1).lower(), match.group(2) or ""
        if mime not in _UPLOAD_MIME or ";base64" not in params.lower():
            check.fail(
                "imageBase64",
                f"data URI must be image/png, image/jpeg or image/webp with ;base64 (got {mime})",
                ErrorId.INVALID_IMAGE_DATA,
            )
            return None
        text = text[match.end() :]
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        check.fail("imageBase64", "not valid base64", ErrorId.INVALID_IMAGE_DATA)
        return None
    if not data:
        check.fail("imageBase64", "empty image", ErrorId.INVALID_IMAGE_DATA)
        return None
    return UploadRequest(task_uuid=task_uuid, data=data)


def _validate_caption(check: _Checker, task_uuid: str, task_type: int | None) -> TaskRequest | None:
    image = check.get_image("imageUUID", required=True)
    return None if image is None else CaptionRequest(task_uuid=task_uuid, image_uuid=image)


def _validate_upscale(check: _Checker, task_uuid: str, task_type: int | None) -> TaskRequest | None:
    image = check.get_image("imageUUID", required=True)
    factor = check.get_int("upscaleFactor", required=True, low=2, high=4)
    if image is None or factor is None:
        return None
    return UpscaleRequest(task_uuid=task_uuid, image_uuid=image, factor=factor)


def _validate_remove_background(
    check: _Checker, task_uuid: str, task_type: int | None
) -> TaskRequest | None:
    image = check.get_image("imageUUID", required=True)
    return None if image is None else RemoveBackgroundRequest(task_uuid=task_uuid, image_uuid=image)


def _validate_enhance(check: _Checker, task_uuid: str, task_type: int | None) -> TaskRequest | None:
    prompt = check.get_text("prompt")
    max_length = check.get_int("promptMaxLength", low=1, high=380)
    versions = check.get_int("promptVersions", low=1, high=5)
    check.get_int("promptLanguageId", low=LANGUAGE_IDS.start, high=LANGUAGE_IDS.stop - 1)
    if prompt is None:
        return None
    return EnhanceRequest(
        task_uuid=task_uuid, prompt=prompt, max_length=max_length or 380, versions=versions or 1
    )


def _validate_preprocess(
    check: _Checker, task_uuid: str, task_type: int | None
) -> TaskRequest | None:
    kind = check.get_choice("preProcessorType", PREPROCESSOR_TYPES, required=True)
    guide = check.get_image("guideImageUUID", required=True)
    width = check.get_int("width", low=0, high=2048)
    height = check.get_int("height", low=0, high=2048)
    # Thresholds are accepted for every preprocessor type here: the Go SDK always sends them.
    low = check.get_int("lowThresholdCanny", low=0, high=255)
    high = check.get_int("highThresholdCanny", low=0, high=255)
    if low is not None and high is not None and low > high:
        check.fail("lowThresholdCanny", f"{low} is above highThresholdCanny {high}")
    check.get_bool("includeHandsAndFaceOpenPose")
    check.get_image("guideImageMaskUUID")
    if kind is None or guide is None:
        return None
    return PreprocessRequest(
        task_uuid=task_uuid, kind=kind, guide_image_uuid=guide,
        width=width or 0, height=height or 0,
    )  # fmt: skip


_VALIDATORS: dict[str, Callable[[_Checker, str, int | None], TaskRequest | None]] = {
    "newTask": _validate_generate,
    "newImageUpload": _validate_upload,
    "newReverseImageClip": _validate_caption,
    "newUpscaleGan": _validate_upscale,
    "newRemoveBackground": _validate_remove_background,
    "newPromptEnhance": _validate_enhance,
    "newPreProcessControlNet": _validate_preprocess,
}
