"""diffusionmaster: a synchronous, thread-safe client of the DiffusionMaster
image-generation WebSocket API.

Quickstart::

    import diffusionmaster

    with diffusionmaster.Client() as client:  # key from DIFFUSIONMASTER_API_KEY
        for image in client.text2img("a lighthouse at dawn", number_results=2):
            image.save(".")
"""

from __future__ import annotations

from .batch import Batch
from .client import ENDPOINTS, Client
from .config import DEFAULT, Heartbeat, Reconnect
from .errors import (
    AuthenticationError,
    ClientClosedError,
    ConnectionFailedError,
    DiffusionMasterError,
    DownloadError,
    InvalidArgumentError,
    ProtocolError,
    ReentrancyError,
    RequestTimeoutError,
    SessionExpiredError,
    TaskError,
)
from .generation import GenerationOptions
from .models import ControlNet, Image, Lora, UploadedImage
from .supervisor import State
from .tables import ControlMode, Model, Scheduler, Size, Style, TaskType
from .usage import Usage

__version__ = "0.1.0"

__all__ = [
    "DEFAULT",
    "ENDPOINTS",
    "AuthenticationError",
    "Batch",
    "Client",
    "ClientClosedError",
    "ConnectionFailedError",
    "ControlMode",
    "ControlNet",
    "DiffusionMasterError",
    "DownloadError",
    "GenerationOptions",
    "Heartbeat",
    "Image",
    "InvalidArgumentError",
    "Lora",
    "Model",
    "ProtocolError",
    "Reconnect",
    "ReentrancyError",
    "RequestTimeoutError",
    "Scheduler",
    "SessionExpiredError",
    "Size",
    "State",
    "Style",
    "TaskError",
    "TaskType",
    "UploadedImage",
    "Usage",
    "__version__",
]
