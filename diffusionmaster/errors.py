"""The exception tree of diffusionmaster.

Every exception the library raises on purpose derives from
:class:`DiffusionMasterError`, and joins the matching builtin family where one
exists, so ``except ValueError`` and ``except TimeoutError`` keep working::

    DiffusionMasterError
    ├── InvalidArgumentError (also ValueError)   you called it wrong; nothing was sent
    ├── AuthenticationError                      the server refused the API key
    ├── ConnectionFailedError (also ConnectionError)
    │                                            the network failed and could not be recovered
    ├── SessionExpiredError                      the connection came back, but the server had
    │                                            forgotten the session: pending results are gone
    ├── ClientClosedError                        the client was closed (or closed while waiting)
    ├── RequestTimeoutError (also TimeoutError)  a call's deadline passed
    ├── DownloadError                            an image download got a redirect, an HTTP
    │                                            error status, or a body over the size cap
    ├── ProtocolError                            the server sent something we cannot understand
    ├── TaskError                                the server reported an error for one task
    └── ReentrancyError (also RuntimeError)      a blocking call from an internal thread

A dropped network is a :class:`ConnectionFailedError` (or, when the server lost the
session meanwhile, a :class:`SessionExpiredError`); it is never reported as an
:class:`AuthenticationError`, which only follows an explicit refusal of the key
(errorId 19).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

__all__ = [
    "AuthenticationError",
    "ClientClosedError",
    "ConnectionFailedError",
    "DiffusionMasterError",
    "DownloadError",
    "InvalidArgumentError",
    "ProtocolError",
    "ReentrancyError",
    "RequestTimeoutError",
    "SessionExpiredError",
    "TaskError",
]


class DiffusionMasterError(Exception):
    """Root of every exception raised by diffusionmaster.

    Every exception of the tree pickles with its message and attributes, so it
    crosses process boundaries (a ``multiprocessing`` pool, Celery's pickle
    serialiser) as itself.
    """

    def __reduce__(self) -> tuple[Any, ...]:
        # Exception's own reduce calls cls(*self.args) on load, which fails for the
        # keyword-only attributes of the subclasses (and then kills a multiprocessing
        # pool's result thread): rebuild without __init__ instead.
        return (_rebuild, (type(self), self.args, self.__dict__.copy()))


def _rebuild(
    cls: type[DiffusionMasterError], args: tuple[Any, ...], state: dict[str, Any]
) -> DiffusionMasterError:
    """Unpickle an exception of the tree: its args and attributes, without ``__init__``."""
    error = cls.__new__(cls)
    error.args = args
    error.__dict__.update(state)
    return error


class InvalidArgumentError(DiffusionMasterError, ValueError):
    """An argument is invalid; raised before anything is sent.

    Attributes:
        parameter: the name of the offending parameter, as the caller spelled it.
    """

    def __init__(self, parameter: str, message: str) -> None:
        super().__init__(f"{parameter}: {message}")
        self.parameter = parameter


class AuthenticationError(DiffusionMasterError):
    """The server refused the API key (errorId 19). The client does not retry it.

    Attributes:
        error_id: the server's error id (19 for an invalid key).
        message: the server's error message.
    """

    def __init__(self, message: str, *, error_id: int | None = None) -> None:
        super().__init__(message)
        self.error_id = error_id
        self.message = message


class ConnectionFailedError(DiffusionMasterError, ConnectionError):
    """The connection to the server failed and could not be re-established."""


class SessionExpiredError(DiffusionMasterError):
    """The server no longer knows the session: results of pending tasks are lost.

    Raised in every call that was waiting when the connection dropped, once the
    client reconnects and the server answers with a new session UUID (the resume
    window had passed, or the server restarted without its buffer). The tasks
    may still have run, and may have been billed; the client does not re-send them.

    Attributes:
        task_uuids: the UUIDs of the tasks whose results were lost.
    """

    def __init__(self, message: str, *, task_uuids: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.task_uuids = tuple(task_uuids)


class ClientClosedError(DiffusionMasterError):
    """The client is closed, or was closed while the call was waiting."""


class RequestTimeoutError(DiffusionMasterError, TimeoutError):
    """A call's deadline passed before its results arrived.

    Attributes:
        task_uuid: the task that timed out, when one had been sent.
    """

    def __init__(self, message: str, *, task_uuid: str | None = None) -> None:
        super().__init__(message)
        self.task_uuid = task_uuid


class DownloadError(DiffusionMasterError):
    """An image download failed on the HTTP level (not the network: that is
    :class:`ConnectionFailedError`, and a passed deadline :class:`RequestTimeoutError`).

    Attributes:
        url: the URL.
        status: the HTTP status, when one was received.
    """

    def __init__(self, message: str, *, url: str, status: int | None = None) -> None:
        super().__init__(message)
        self.url = url
        self.status = status


class ProtocolError(DiffusionMasterError):
    """A frame could not be understood (malformed JSON, or missing required fields)."""


class TaskError(DiffusionMasterError):
    """The server reported an error for one task.

    Attributes:
        task_uuid: the task the error concerns.
        error_id: the server's error id, or None when it sent none.
        message: the server's error message.
    """

    def __init__(self, message: str, *, task_uuid: str | None, error_id: int | None) -> None:
        super().__init__(f"task {task_uuid} failed (errorId {error_id}): {message}")
        self.task_uuid = task_uuid
        self.error_id = error_id
        self.message = message


class ReentrancyError(DiffusionMasterError, RuntimeError):
    """A blocking call was made from a thread of the client itself (a callback or
    listener), where waiting would deadlock."""
