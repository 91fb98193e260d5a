"""The one module that touches websocket-client.

:class:`Transport` opens the connection with websocket-client's low-level
``WebSocket`` (TCP or TLS, proxies, the HTTP upgrade), then reads and writes the
WebSocket frames (RFC 6455 §5) on its socket itself, and translates every
exception the socket or websocket-client raises into
:class:`~diffusionmaster.errors.ConnectionFailedError`, here and nowhere else.

Why frames are handled here rather than by ``recv_data_frame``/``send`` (measured
on the benchmark machine; bench/RESULTS.md has the end-to-end effect):
websocket-client reads a frame in 2 to 4 ``recv`` calls through several Python
layers (8 us per small frame, against 1.1 us here), reads large frames in 16 KiB
pieces that it then joins (twice the frame in memory; 8 to 24 ms to read 14 MB
against about 5 ms), and masks whole payloads with big-integer arithmetic and
copies the unsent rest after every partial ``send`` (13 us per small frame against
5 to 8 us here; 94 to 290 ms for a 14 MB upload frame against 30 ms). Everything
else (handshake, TLS, proxy) stays websocket-client's. Text messages of 64 KiB and more are handed
on undecoded, as a ``bytearray``: :func:`~diffusionmaster.protocol.decode` cuts the
base64 out of large results before it parses them.

After a :class:`~diffusionmaster.errors.ConnectionFailedError` (a timeout included)
a transport is done: a frame may have been cut in the middle.

Thread-safety: one thread (the reader) may call :meth:`Transport.recv` while others
call :meth:`Transport.send`. Every frame written, including the pong and the close
frame the reader writes in answer to the server's, is written whole under one
send lock, so frames never interleave on the wire (the reader may therefore wait,
to answer a ping, until a send in progress has handed its bytes to the socket).
:meth:`Transport.abort` may be called from any thread and wakes a blocked ``recv``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
from typing import Any

import websocket

from .errors import ConnectionFailedError

logger = logging.getLogger("diffusionmaster.transport")

_CONT, _TEXT, _BINARY = 0x0, 0x1, 0x2
_CLOSE, _PING, _PONG = 0x8, 0x9, 0xA

#: Bytes asked of the socket per read while small frames are parsed.
_READ_SIZE = 256 * 1024
#: Payloads at least this large are read straight into their own buffer.
_DIRECT = 64 * 1024
#: Large payloads are masked and sent in pieces of this size (a multiple of 4).
_SEND_CHUNK = 256 * 1024


class _Closed(Exception):
    """The peer closed the TCP connection (a read returned no bytes)."""


class _Violation(Exception):
    """The peer broke the WebSocket protocol."""


def _failure(what: str, exc: BaseException) -> ConnectionFailedError:
    """The ConnectionFailedError for an exception of the socket or websocket-client."""
    if isinstance(exc, (websocket.WebSocketTimeoutException, socket.timeout)):
        return ConnectionFailedError(f"{what}: timed out")
    if isinstance(exc, _Closed):
        return ConnectionFailedError(f"{what}: the server closed the TCP connection")
    if isinstance(exc, _Violation):
        return ConnectionFailedError(f"{what}: WebSocket protocol error: {exc}")
    return ConnectionFailedError(f"{what}: {exc or type(exc).__name__}")


# The exceptions translated: websocket-client's, the socket's, and ValueError, which
# websocket-client raises for some malformed handshakes.
_TRANSLATED = (websocket.WebSocketException, OSError, ValueError, _Closed, _Violation)


def _mask(data: bytes | bytearray | memoryview, key: bytes) -> bytes:
    """XOR ``data`` with the 4-byte ``key`` repeated (RFC 6455 §5.3)."""
    size = len(data)
    if not size:
        return b""
    pad = (key * (size // 4 + 1))[:size]
    masked = int.from_bytes(data, "little") ^ int.from_bytes(pad, "little")
    return masked.to_bytes(size, "little")


def _header(opcode: int, size: int, key: bytes) -> bytes:
    """The header of a final, masked client frame (RFC 6455 §5.2), mask key included."""
    if size < 126:
        return bytes((0x80 | opcode, 0x80 | size)) + key
    if size < 1 << 16:
        return bytes((0x80 | opcode, 0x80 | 126)) + size.to_bytes(2, "big") + key
    return bytes((0x80 | opcode, 0x80 | 127)) + size.to_bytes(8, "big") + key


class Transport:
    """One WebSocket connection, blocking I/O."""

    def __init__(self, ws: Any, url: str) -> None:
        self._ws = ws
        self._sock: socket.socket = ws.sock
        self._send_lock = threading.Lock()
        self.url = url
        #: The close code the server sent, once a close frame was received.
        self.close_code: int | None = None
        # Reader state, used by the reader thread only. Bytes received and not yet
        # parsed; the handshake reads its response line by line, so nothing follows
        # it yet, but take over anything websocket-client did buffer.
        leftover = getattr(getattr(ws, "frame_buffer", None), "recv_buffer", None)
        self._buffer = bytearray(b"".join(leftover or ()))
        self._chunk = bytearray(_READ_SIZE)
        self._chunk_view = memoryview(self._chunk)
        self._fragments: list[bytes | bytearray] | None = None  # a message in pieces
        self._fragments_opcode = _TEXT

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
            skip_utf8_validation=True,  # frames are not read by websocket-client anyway
            enable_multithread=False,  # we serialise sends ourselves; one reader thread
            sockopt=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)],
        )
        try:
            ws.connect(url, timeout=timeout, suppress_origin=True, **options)  # type: ignore[no-untyped-call,unused-ignore]
        except _TRANSLATED as exc:
            raise _failure(f"cannot connect to {url}", exc) from exc
        return cls(ws, url)

    def settimeout(self, timeout: float | None) -> None:
        """Set the timeout of subsequent blocking reads (None: block)."""
        try:
            self._ws.settimeout(timeout)
        except _TRANSLATED as exc:
            raise _failure("settimeout", exc) from exc

    # -- sending ---------------------------------------------------------------------

    def send(self, text: str) -> None:
        """Send one text frame.

        Raises:
            ConnectionFailedError: the connection is broken.
        """
        payload = text.encode("utf-8")
        try:
            with self._send_lock:
                self._write(_TEXT, payload)
        except _TRANSLATED as exc:
            raise _failure("send failed", exc) from exc

    def _write(self, opcode: int, payload: bytes) -> None:
        # Called with the send lock held: one whole frame, masked with a fresh key.
        key = os.urandom(4)
        size = len(payload)
        sock = self._sock
        if size < _SEND_CHUNK:
            sock.sendall(_header(opcode, size, key) + _mask(payload, key))
            return
        # Mask piece by piece while the socket drains: no second copy of the payload,
        # and big-integer XOR on pieces that stay in cache.
        sock.sendall(_header(opcode, size, key))
        view = memoryview(payload)
        pad = int.from_bytes(key * (_SEND_CHUNK // 4), "little")
        end = size - size % _SEND_CHUNK
        for start in range(0, end, _SEND_CHUNK):
            piece = int.from_bytes(view[start : start + _SEND_CHUNK], "little") ^ pad
            sock.sendall(piece.to_bytes(_SEND_CHUNK, "little"))
        if end < size:
            sock.sendall(_mask(view[end:], key))  # pieces start at multiples of 4

    # -- receiving -------------------------------------------------------------------

    def recv(self) -> str | bytes | bytearray | None:
        """Block until the next data message; return its payload, or None on a close frame.

        Text messages come back as ``str`` (as ``bytes`` when they are not valid
        UTF-8, so that the JSON decoder reports them); from 64 KiB up, as their
        undecoded UTF-8 ``bytearray``, which :func:`~diffusionmaster.protocol.decode`
        reads without a full copy as ``str``. Binary messages come back as ``bytes``.
        Pings are answered and pongs skipped; a close frame is answered with a close frame.

        Raises:
            ConnectionFailedError: the connection broke, the read timed out, or the
                server broke the WebSocket protocol.
        """
        try:
            while True:
                fin, opcode, payload = self._read_frame()
                if opcode >= _CLOSE:
                    if opcode == _CLOSE:
                        if len(payload) >= 2:
                            self.close_code = int.from_bytes(payload[:2], "big")
                        self._answer(_CLOSE, (1000).to_bytes(2, "big"))
                        return None
                    if opcode == _PING:
                        self._answer(_PONG, bytes(payload))
                    elif opcode != _PONG:
                        raise _Violation(f"unknown control opcode {opcode:#x}")
                    continue
                if opcode == _CONT:
                    if self._fragments is None:
                        raise _Violation("a continuation frame outside a message")
                    self._fragments.append(payload)
                    if not fin:
                        continue
                    opcode, pieces, self._fragments = self._fragments_opcode, self._fragments, None
                    payload = b"".join(pieces)
                    del pieces
                elif self._fragments is not None:
                    raise _Violation("a new message inside a fragmented one")
                elif not fin:
                    self._fragments, self._fragments_opcode = [payload], opcode
                    continue
                if opcode == _TEXT:
                    return self._text(payload)
                if opcode == _BINARY:
                    return bytes(payload)
                raise _Violation(f"unknown data opcode {opcode:#x}")
        except _TRANSLATED as exc:
            raise _failure("connection lost", exc) from exc

    @staticmethod
    def _text(payload: bytes | bytearray) -> str | bytes | bytearray:
        if len(payload) >= _DIRECT:
            return payload  # decoded by protocol.decode, which cuts base64 out first
        try:
            return payload.decode("utf-8")
        except UnicodeDecodeError:
            return bytes(payload)

    def _answer(self, opcode: int, payload: bytes) -> None:
        # The reader answers a ping or a close; a failure shows at the next read.
        try:
            with self._send_lock:
                self._write(opcode, payload)
        except _TRANSLATED as exc:
            logger.debug("could not answer a control frame: %s", exc)

    def _fill(self, size: int) -> None:
        """Read until the buffer holds at least ``size`` bytes."""
        buffer, chunk, sock = self._buffer, self._chunk_view, self._sock
        while len(buffer) < size:
            count = sock.recv_into(chunk)
            if not count:
                raise _Closed()
            buffer += chunk[:count]

    def _read_frame(self) -> tuple[bool, int, bytes | bytearray]:
        """Read one frame: (final, opcode, unmasked payload)."""
        buffer = self._buffer
        if len(buffer) < 2:
            self._fill(2)
        first, second = buffer[0], buffer[1]
        if first & 0x70:
            raise _Violation("reserved bits set, but no extension was negotiated")
        opcode, size, start = first & 0x0F, second & 0x7F, 2
        if size == 126:
            self._fill(4)
            size, start = int.from_bytes(buffer[2:4], "big"), 4
        elif size == 127:
            self._fill(10)
            size, start = int.from_bytes(buffer[2:10], "big"), 10
            if size >> 63:
                raise _Violation("a payload length with its top bit set")
        key = b""
        if second & 0x80:  # servers must not mask; websocket-client accepts it, so do we
            self._fill(start + 4)
            key, start = bytes(buffer[start : start + 4]), start + 4
        if opcode >= _CLOSE and (size > 125 or not first & 0x80):
            raise _Violation("a control frame that is fragmented or longer than 125 bytes")
        payload: bytes | bytearray
        if size < _DIRECT or start + size <= len(buffer):
            self._fill(start + size)
            payload = buffer[start : start + size]
            del buffer[: start + size]  # cheap: bytearray drops a prefix without moving
        else:
            # Large: read straight into a buffer of the payload's size (one copy, and
            # no second buffer to join pieces into).
            payload = bytearray(size)
            have = len(buffer) - start
            payload[:have] = buffer[start:]
            del buffer[:]
            view = memoryview(payload)
            sock = self._sock
            while have < size:
                count = sock.recv_into(view[have:])
                if not count:
                    raise _Closed()
                have += count
            view.release()
        if key:
            payload = _mask(payload, key)
        return bool(first & 0x80), opcode, payload

    # -- closing ---------------------------------------------------------------------

    def abort(self) -> None:
        """Shut the socket down at once (no close frame); wakes a blocked :meth:`recv`."""
        with contextlib.suppress(Exception):
            self._ws.abort()

    def close(self, code: int = 1000) -> None:
        """Send a close frame if possible, then shut the socket down. Never blocks long."""
        if self._send_lock.acquire(timeout=0.5):
            try:
                with contextlib.suppress(Exception):
                    self._sock.settimeout(0.5)  # a peer that reads nothing cannot hold us
                    self._write(_CLOSE, code.to_bytes(2, "big"))
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
