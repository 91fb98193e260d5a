"""The one module that touches websocket-client.

:class:`Transport` wraps a low-level ``websocket.WebSocket`` and translates every
exception it (or the socket under it) raises into
:class:`~diffusionmaster.errors.ConnectionFailedError`, here and nowhere else.

Thread-safety: one thread may call :meth:`Transport.recv` while others call
:meth:`Transport.send` (sends are serialised by a lock); :meth:`Transport.abort`
may be called from any thread and wakes a blocked ``recv``.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
from collections.abc import Iterator
from typing import Any

import websocket

from .errors import ConnectionFailedError

logger = logging.getLogger("diffusionmaster.transport")

_TEXT = websocket.ABNF.OPCODE_TEXT
_BINARY = websocket.ABNF.OPCODE_BINARY
_CLOSE = websocket.ABNF.OPCODE_CLOSE


@contextlib.contextmanager
def _translated(what: str) -> Iterator[None]:
    """Map websocket-client and socket exceptions to ConnectionFailedError."""
    try:
        yield
    except ConnectionFailedError:
        raise
    except websocket.WebSocketTimeoutException as exc:
        raise ConnectionFailedError(f"{what}: timed out") from exc
    except (websocket.WebSocketException, OSError, ValueError) as exc:
        # ValueError: websocket-client raises it for some malformed handshakes.
        raise ConnectionFailedError(f"{what}: {exc or type(exc).__name__}") from exc


class Transport:
    """One WebSocket connection, blocking I/O."""

    def __init__(self, ws: Any, url: str) -> None:
        self._ws = ws
        self._send_lock = threading.Lock()
        self.url = url
        #: The close code the server sent, once a close frame was received.
        self.close_code: int | None = None

    @classmethod
    def connect(cls, url: str, *, timeout: float | None, **options: Any) -> Transport:
        """Open a WebSocket to ``url``.

        Args:
            url: ``ws://`` or ``wss://`` URL.
            timeout: seconds for the TCP connect and the opening handshake.
            options: passed to ``websocket.WebSocket.connect`` (proxy settings, headers).

        Raises:
            ConnectionFailedError: the connection could not be opened.
        """
        ws = websocket.WebSocket(
            skip_utf8_validation=True,  # its pure-Python check runs at ~7 MB/s; json rejects bad UTF-8
            enable_multithread=False,  # we serialise sends ourselves; one reader thread
            sockopt=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)],
        )
        with _translated(f"cannot connect to {url}"):
            ws.connect(url, timeout=timeout, suppress_origin=True, **options)  # type: ignore[no-untyped-call,unused-ignore]
        return cls(ws, url)

    def settimeout(self, timeout: float | None) -> None:
        """Set the timeout of subsequent blocking reads (None: block)."""
        with _translated("settimeout"):
            self._ws.settimeout(timeout)

    def send(self, text: str) -> None:
        """Send one text frame.

        Raises:
            ConnectionFailedError: the connection is broken.
        """
        with self._send_lock, _translated("send failed"):
            self._ws.send(text)

    def recv(self) -> str | bytes | None:
        """Block until the next data frame; return its payload, or None on a close frame.

        Text frames come back as UTF-8 ``bytes``: ``json.loads`` takes them as they are.

        Raises:
            ConnectionFailedError: the connection broke or the read timed out.
        """
        while True:
            with _translated("connection lost"):
                # True: return control frames too, so a close frame is seen as such
                # (plain recv() returns '' for it). Pings are answered inside.
                opcode, frame = self._ws.recv_data_frame(True)
            if opcode == _CLOSE:
                data = frame.data
                if len(data) >= 2:
                    self.close_code = int.from_bytes(data[:2], "big")
                return None
            if opcode in (_TEXT, _BINARY):
                payload: bytes = frame.data
                return payload

    def abort(self) -> None:
        """Shut the socket down at once (no close frame); wakes a blocked :meth:`recv`."""
        with contextlib.suppress(Exception):
            self._ws.abort()

    def close(self, code: int = 1000) -> None:
        """Send a close frame if possible, then shut the socket down. Never blocks long."""
        if self._send_lock.acquire(timeout=0.5):
            try:
                with contextlib.suppress(Exception):
                    self._ws.send_close(code)
            finally:
                self._send_lock.release()
        self.abort()
        with contextlib.suppress(Exception):
            self._ws.shutdown()

    def detach(self) -> None:
        """Forget the socket without shutting it down (after ``fork()``, in the child).

        ``shutdown()`` would cut the parent's connection too; closing our copy of the
        file descriptor does not.
        """
        sock = getattr(self._ws, "sock", None)
        with contextlib.suppress(Exception):
            if sock is not None:
                sock.close()
