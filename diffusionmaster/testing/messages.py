"""What the emulator reads and answers: message keys, error ids, validated requests.

Error ids sent by the emulator (the real service documents only 19):

=====  ====================================================================
id     meaning
=====  ====================================================================
19     invalid API key, or a first frame that is not ``newConnection``;
       the connection is then closed with code 1008
400    malformed frame: not valid JSON (``NaN`` included), not a JSON object,
       a binary frame, no known message key, several message keys, or a
       message body that is not an object; sent without ``taskUUID``
404    a referenced image UUID is unknown to the server (for this API key)
409    ``newConnection`` on a connection that is already authenticated
415    an upload that is not valid base64 of a PNG, JPEG or WEBP image
422    a field is missing, has the wrong type, is out of range, is not in its
       id table, or does not fit the ``taskType``
500    default id of a failure injected with ``Emulator.fail_next_task``
=====  ====================================================================

When a task body holds several problems of different kinds, the error id is
the one of the first problem found.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any, Union

__all__ = [
    "MESSAGE_KEYS",
    "TASK_KEYS",
    "CaptionRequest",
    "ControlNetItem",
    "EnhanceRequest",
    "ErrorId",
    "FrameError",
    "GenerateRequest",
    "PreprocessRequest",
    "RemoveBackgroundRequest",
    "TaskRequest",
    "UploadRequest",
    "UpscaleRequest",
]


class ErrorId(enum.IntEnum):
    """The ``errorId`` values the emulator sends (see the module docstring)."""

    INVALID_API_KEY = 19
    MALFORMED_FRAME = 400
    IMAGE_NOT_FOUND = 404
    ALREADY_AUTHENTICATED = 409
    INVALID_IMAGE_DATA = 415
    INVALID_FIELD = 422
    INJECTED_FAILURE = 500


class FrameError(Exception):
    """A received frame is invalid; the emulator answers it with an error frame.

    Attributes:
        error_id: the ``errorId`` to send.
        message: the ``errorMessage`` to send.
        task_uuid: the task's UUID when it could be read, else None.
    """

    def __init__(self, error_id: int, message: str, task_uuid: str | None = None) -> None:
        super().__init__(message)
        self.error_id = error_id
        self.message = message
        self.task_uuid = task_uuid

    def to_frame(self) -> dict[str, Any]:
        """Return the flat error frame of protocol.md §6."""
        frame: dict[str, Any] = {
            "error": True,
            "errorId": int(self.error_id),
            "errorMessage": self.message,
        }
        if self.task_uuid is not None:
            frame["taskUUID"] = self.task_uuid
        return frame


#: Message keys that open a task (each answered with results or a task error).
TASK_KEYS: frozenset[str] = frozenset(
    {
        "newTask", "newImageUpload", "newReverseImageClip", "newUpscaleGan",
        "newRemoveBackground", "newPromptEnhance", "newPreProcessControlNet",
    }
)  # fmt: skip

#: Every top-level message key a client may send.
MESSAGE_KEYS: frozenset[str] = TASK_KEYS | {"newConnection", "ping"}


@dataclass(frozen=True)
class ControlNetItem:
    """One validated ``controlNet[]`` item (only what rendering needs)."""

    preprocessor: str
    guide_image_uuid: str | None


@dataclass(frozen=True)
class GenerateRequest:
    """A validated ``newTask`` (taskType 1, 2, 3, 9 or 10)."""

    task_uuid: str
    task_type: int
    prompt: str
    number_results: int
    size: tuple[int, int]
    seed: int | None
    offset: int
    check_nsfw: bool
    return_base64: bool
    init_image_uuid: str | None
    mask_image_uuid: str | None
    controlnet: tuple[ControlNetItem, ...]


@dataclass(frozen=True)
class UploadRequest:
    """A validated ``newImageUpload``; ``data`` is the decoded file (not yet opened)."""

    task_uuid: str
    data: bytes


@dataclass(frozen=True)
class CaptionRequest:
    """A validated ``newReverseImageClip``."""

    task_uuid: str
    image_uuid: str


@dataclass(frozen=True)
class UpscaleRequest:
    """A validated ``newUpscaleGan``."""

    task_uuid: str
    image_uuid: str
    factor: int


@dataclass(frozen=True)
class RemoveBackgroundRequest:
    """A validated ``newRemoveBackground``."""

    task_uuid: str
    image_uuid: str


@dataclass(frozen=True)
class EnhanceRequest:
    """A validated ``newPromptEnhance``."""

    task_uuid: str
    prompt: str
    max_length: int
    versions: int


@dataclass(frozen=True)
class PreprocessRequest:
    """A validated ``newPreProcessControlNet``; width/height 0 = the guide's own size."""

    task_uuid: str
    kind: str
    guide_image_uuid: str
    width: int
    height: int


TaskRequest = Union[
    GenerateRequest,
    UploadRequest,
    CaptionRequest,
    UpscaleRequest,
    RemoveBackgroundRequest,
    EnhanceRequest,
    PreprocessRequest,
]
