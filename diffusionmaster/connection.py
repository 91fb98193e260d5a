"""One authenticated WebSocket: the handshake, and the reader thread.

:func:`authenticate` opens a socket and performs the ``newConnection`` handshake
in the calling thread. :class:`Connection` then owns that socket: its reader
thread (``diffusionmaster-reader``) decodes every frame and hands the event to a
callback, and reports the end of the connection exactly once.

Threading invariants:

- The reader thread only blocks on the socket (and, to answer a server ping or
  close frame, on the transport's send lock, held only while a send hands its
  bytes to that socket). It never runs user code: the ``on_event`` callback it
  is given routes events into queues and returns.
- The reader holds no frame or event while it waits for the next frame, so a
  large result is freed as soon as its caller is done with it.
- ``send`` may be called from any thread (the transport serialises sends).
- ``on_lost`` runs once, on the reader thread, when the socket ends for any
  reason (close frame, error, or ``abort()`` from another thread).
- Warnings about what the server sent go through :meth:`Connection.warn`, on the
  reader thread only: a server sending a stream of bad frames costs the
  application's logs at most :data:`SERVER_WARNINGS` warnings per connection.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from . import protocol
from ._transport import Transport
from .config import Deadline
from .errors import AuthenticationError, ConnectionFailedError

logger = logging.getLogger("diffusionmaster.connection")

INVALID_API_KEY = 19

#: Warnings about the server's frames logged at WARNING per connection; the rest at DEBUG.
SERVER_WARNINGS = 20

#: Marks the threads of the library, so that a blocking call made on one of them
#: (from a callback or listener) fails fast instead of deadlocking.
internal_thread = threading.local()


def authenticate(
    url: str,
    api_key: str,
    session_uuid: str | None,
    *,
    timeout: float | None,
    options: dict[str, Any],
) -> tuple[Transport, str]:
    """Connect to ``url`` and authenticate; return the transport and the session UUID.

    With ``session_uuid`` the server is asked to resume that session; it answers
    with the same UUID when it could, a different one when it could not.

    Raises:
        AuthenticationError: the server refused the key (errorId 19).
        ConnectionFailedError: the network failed, the handshake timed out, or the
            server closed the connection before answering.
    """
    deadline = Deadline(timeout)
    transport = Transport.connect(url, timeout=deadline.remaining(), **options)
    try:
        # One deadline for the whole attempt: every read below ends by it, however
        # slowly the server trickles its reply.
        transport.settimeout(deadline.remaining())
        transport.send(protocol.encode(protocol.NewConnection(api_key, session_uuid)))
        while True:
            data = transport.recv()
            if data is None:
                raise ConnectionFailedError(
                    f"server closed the connection during authentication "
                    f"(close code {transport.close_code})"
                )
            event = protocol.decode(data)
            if isinstance(event, protocol.SessionEstablished):
                transport.settimeout(None)
                return transport, event.connection_session_uuid
            if isinstance(event, protocol.ServerError) and event.task_uuid is None:
                if event.error_id == INVALID_API_KEY:
                    raise AuthenticationError(
                        f"the server refused the API key: {event.error_message}",
                        error_id=event.error_id,
                    )
                raise ConnectionFailedError(
                    f"the server refused the connection (errorId {event.error_id}): "
                    f"{event.error_message}"
                )
            logger.debug("ignoring %s before authentication", type(event).__name__)
    except BaseException:
        transport.abort()
        raise


class Connection:
    """An authenticated socket and its reader thread. Thread-safe."""

    def __init__(
        self,
        transport: Transport,
        session_uuid: str,
        *,
        on_event: Callable[[Connection, protocol.Event], None],
        on_lost: Callable[[Connection, BaseException | None], None],
    ) -> None:
        self.transport = transport
        self.session_uuid = session_uuid
        self._on_event = on_event
        self._on_lost = on_lost
        self._warnings_left = SERVER_WARNINGS
        self._reader = threading.Thread(
            target=self._read_loop, name="diffusionmaster-reader", daemon=True
        )

    @property
    def last_received(self) -> float:
        """Monotonic time bytes last arrived: a frame still arriving proves the link alive."""
        return self.transport.last_received

    @property
    def last_sent(self) -> float:
        """Monotonic time the socket last accepted bytes to send."""
        return self.transport.last_sent

    def warn(self, log: logging.Logger, message: str, *args: object) -> None:
        """Log a warning about what the server sent (on the reader thread only).

        The first :data:`SERVER_WARNINGS` of this connection are logged at WARNING
        (the last one says so), later ones at DEBUG: a server that sends bad frames
        without end cannot flood the application's logs.
        """
        if self._warnings_left <= 0:
            log.debug(message, *args)
            return
        self._warnings_left -= 1
        if not self._warnings_left:
            message += " (more warnings about this connection's frames are logged at DEBUG)"
        log.warning(message, *args)

    def start(self) -> None:
        """Start the reader thread."""
        self._reader.start()

    @property
    def reading(self) -> bool:
        """True while the reader thread runs."""
        return self._reader.is_alive()

    def send(self, text: str) -> None:
        """Send one frame.

        Raises:
            ConnectionFailedError: the connection is broken.
        """
        self.transport.send(text)

    def try_send(self, text: str) -> bool:
        """Send a small frame only if that cannot block (see ``Transport.try_send``).

        Raises:
            ConnectionFailedError: the connection is broken.
        """
        return self.transport.try_send(text)

    def abort(self) -> None:
        """Cut the connection at once; the reader reports it lost."""
        self.transport.abort()

    def close(self, timeout: float = 2.0) -> None:
        """Close the connection and wait (up to ``timeout``) for the reader to end."""
        # A close frame, then a short wait for the server's (the reader sees it).
        self.transport.close(timeout=min(timeout, 1.0))
        if self._reader.is_alive() and self._reader is not threading.current_thread():
            self._reader.join(timeout)

    def _read_loop(self) -> None:
        internal_thread.active = True
        reason: BaseException | None = None
        recv, decode, on_event = self.transport.recv, protocol.decode, self._on_event
        try:
            while True:
                data = recv()
                if data is None:
                    reason = ConnectionFailedError(
                        f"server closed the connection (close code {self.transport.close_code})"
                    )
                    break
                try:
                    event = decode(data)
                except Exception as exc:
                    # One bad frame must not take the connection down with it. decode()
                    # raises only ProtocolError; anything else would be its bug, and
                    # still costs only this frame.
                    self.warn(logger, "ignoring a frame that cannot be decoded: %s", exc)
                    continue
                finally:
                    # Let go of the frame before handing the event on, and of the event
                    # before blocking in recv(): with a large base64 result the caller
                    # decodes the image meanwhile, and a frame or event held here would
                    # keep tens of MB alive for nothing (bench "large": peak memory).
                    del data
                on_event(self, event)
                del event
        except ConnectionFailedError as exc:
            reason = exc
        except BaseException as exc:  # pragma: no cover - a bug; keep the client alive
            logger.exception("reader thread failed")
            reason = exc
        finally:
            self._on_lost(self, reason)
