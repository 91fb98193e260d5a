"""The one module that touches websocket-client.

:class:`Transport` opens the connection with websocket-client's low-level
``WebSocket`` (TCP or TLS, proxies, the HTTP upgrade) and reads and writes frames
with it (``recv_frame``/``send``), and translates every exception the socket
or websocket-client raises into :class:`~diffusionmaster.errors.ConnectionFailedError`,
here and nowhere else.

What is ours, and why:

- **Control frames and fragmented messages.** websocket-client reads and checks
  each frame (``WebSocket.recv_frame``: reserved bits, opcodes, close codes and
  lengths); we answer pings and close frames and reassemble fragments. Its
  ``recv_data_frame`` joins fragments with ``bytes +=`` (quadratic in the number of
  fragments: a 10 MB message in 1 KiB fragments copies about 50 GB) and answers a
  close frame even after it sent its own; we append fragments to one
  ``bytearray``, checking the size against ``max_message_size`` as they arrive,
  and send nothing after a close frame. *Upstream note:* ``continuous_frame.add``
  should collect fragments in a list or bytearray, and ``recv_data_frame`` should
  not answer a close frame once it sent one.
- **UTF-8.** websocket-client's own check is pure Python (about 7 MB/s), and it
  accepts a message that ends in the middle of a character. We pass
  ``skip_utf8_validation=True`` and check every text message (and close reason)
  with Python's strict codec (ASCII, the usual case, is checked without a copy).
  Invalid UTF-8 fails the connection with close code 1007 and is never decoded.
  *Upstream note:* ``validate_utf8`` should reject a truncated final sequence.
- **A counter under websocket-client's reads and writes** (:class:`_Socket`, which
  replaces the public ``WebSocket.sock`` attribute after the handshake): it notes
  when bytes last arrived and left (the heartbeat counts bytes, not whole frames,
  as signs of life, so a 40 MB result arriving slowly is not declared dead; this
  works under TLS too, where it counts decrypted bytes), stops a frame that grows
  past the message budget while it arrives (a header declaring 2 GiB allocates
  nothing: websocket-client reads payloads 16 KiB at a time), bounds the
  authentication exchange by one deadline, and reads ahead (websocket-client asks
  for a frame's header and payload apart; one socket read serves both). Linux's
  ``TCP_INFO`` (``tcpi_last_data_recv``) would also tell when data last arrived,
  but only on Linux, and by unpacking a kernel struct; counting here works on
  every platform. Under TLS it sees bytes once each record (at most 16 KiB) is
  decrypted: at any rate worth keeping a link for, well inside the heartbeat.

No private attribute of websocket-client is read.

After a :class:`~diffusionmaster.errors.ConnectionFailedError` (a timeout included)
a transport is done: a frame may have been cut in the middle. A transport that
ended lets go of its buffers (a partial frame included) and closes its socket.

Thread-safety: one thread (the reader) may call :meth:`Transport.recv` while others
call :meth:`Transport.send`. Every frame (sends, pongs, close frames) is written
whole under our own send lock, so frames never interleave (websocket-client writes
nothing by itself here, so its own lock is off: ``enable_multithread=False``).
:meth:`Transport.try_send` never waits for that lock nor for room in the socket
buffer (the heartbeat uses it: a send stalled on a frozen link must not hold up the
detection of that link), and :meth:`Transport.close` waits for it only briefly. :meth:`Transport.abort` may be
called from any thread and wakes a blocked ``recv`` or ``send``.
"""

from __future__ import annotations

import contextlib
import logging
import select
import socket
import threading
import time
from typing import Any

import websocket
from websocket import ABNF

from .errors import ConnectionFailedError

logger = logging.getLogger("diffusionmaster.transport")

_CONT, _TEXT, _BINARY = ABNF.OPCODE_CONT, ABNF.OPCODE_TEXT, ABNF.OPCODE_BINARY
_CLOSE, _PING, _PONG = ABNF.OPCODE_CLOSE, ABNF.OPCODE_PING, ABNF.OPCODE_PONG

#: Close codes we send when we fail the connection (RFC 6455 §7.4.1).
PROTOCOL_ERROR, INVALID_PAYLOAD, MESSAGE_TOO_BIG = 1002, 1007, 1009

#: Text messages this large are handed on undecoded (protocol.decode cuts base64 out).
_DIRECT = 64 * 1024
#: Bytes asked of the socket per read (websocket-client asks for less, several times).
_READ_AHEAD = 64 * 1024
#: Bytes a frame header may add to its payload (RFC 6455 §5.2: at most 14).
_HEADER_MAX = 14
#: How long close() waits for the server's close frame.
CLOSE_WAIT = 1.0


def _socket_options() -> list[tuple[int, int, int]]:
    # TCP_NODELAY: frames go out at once. Keepalive and TCP_USER_TIMEOUT (where the
    # platform has them) let the kernel find a link that died under unacknowledged
    # data or a long silence; the heartbeat still finds a frozen server (whose
    # kernel keeps acknowledging) and works everywhere.
    options = [
        (socket.IPPROTO_TCP, socket.TCP_NODELAY, 1),
        (socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1),
    ]
    for name, value in (("TCP_KEEPIDLE", 30), ("TCP_KEEPINTVL", 10), ("TCP_KEEPCNT", 3),
                        ("TCP_USER_TIMEOUT", 60_000)):  # fmt: skip
        if hasattr(socket, name):
            options.append((socket.IPPROTO_TCP, getattr(socket, name), value))
    return options


_SOCKET_OPTIONS = _socket_options()


class _Closed(Exception):
    """The connection is over: nothing more may be sent."""


class _Violation(Exception):
    """The peer broke the WebSocket protocol: fail the connection with ``code``."""

    def __init__(self, message: str, code: int = PROTOCOL_ERROR) -> None:
        super().__init__(message)
        self.code = code


class _TooBig(_Violation):
    """A message grew past ``max_message_size``."""

    def __init__(self, message: str) -> None:
        super().__init__(message, MESSAGE_TOO_BIG)


def _failure(what: str, exc: BaseException) -> ConnectionFailedError:
    """The ConnectionFailedError for an exception of the socket or websocket-client."""
    if isinstance(exc, (websocket.WebSocketTimeoutException, socket.timeout)):
        return ConnectionFailedError(f"{what}: timed out")
    if isinstance(exc, websocket.WebSocketConnectionClosedException):
        return ConnectionFailedError(f"{what}: the server closed the TCP connection")
    if isinstance(exc, _Violation):
        return ConnectionFailedError(f"{what}: {exc} (close code {exc.code})")
    if isinstance(exc, websocket.WebSocketProtocolException):
        return ConnectionFailedError(f"{what}: WebSocket protocol error: {exc}")
    if isinstance(exc, _Closed):
        return ConnectionFailedError(f"{what}: the connection is closed")
    return ConnectionFailedError(f"{what}: {exc or type(exc).__name__}")


# The exceptions translated: websocket-client's, the socket's, ValueError (which
# websocket-client raises for some malformed handshakes), and ours.
_TRANSLATED = (websocket.WebSocketException, OSError, ValueError, _Closed, _Violation)


def _writable(sock: socket.socket, timeout: float) -> bool:
    """Whether ``sock`` has room to send, waiting up to ``timeout`` seconds.

    ``poll`` where the platform has it: ``select`` refuses descriptors above
    FD_SETSIZE (1024), which a busy process (a server, a worker) easily reaches.
    """
    if hasattr(select, "poll"):
        poller = select.poll()
        poller.register(sock, select.POLLOUT)
        return bool(poller.poll(max(0, int(timeout * 1000))))
    return bool(select.select([], [sock], [], timeout)[1])


def _valid_utf8(data: bytes | bytearray) -> bool:
    if data.isascii():  # no copy: the usual case, base64 and JSON
        return True
    try:
        data.decode("utf-8")  # strict: rejects surrogates, overlongs, truncation
    except UnicodeDecodeError:
        return False
    return True


class _Socket:
    """The socket below websocket-client, with a byte counter, a budget and a deadline.

    websocket-client reads and writes through ``WebSocket.sock``; everything but
    ``recv`` and ``send`` is passed through to the real socket (TCP or TLS).
    """

    def __init__(self, sock: socket.socket) -> None:
        self.real = sock
        # Asked for on every read and write: the real socket's own methods, bound here,
        # cost no Python call (not through __getattr__, not through a wrapper method).
        self.gettimeout = sock.gettimeout
        self.fileno = sock.fileno
        now = time.monotonic()
        #: monotonic time bytes last arrived / were accepted by the socket
        self.last_received = now
        self.last_sent = now
        #: bytes that may still arrive before the current frame is too big (None: no cap)
        self.budget: int | None = None
        #: while set, every read ends by this monotonic time
        self.deadline: float | None = None
        # Bytes read from the socket and not yet handed to websocket-client.
        self.ahead: bytes | None = None
        self._at = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)

    def recv(self, size: int) -> bytes:
        # websocket-client asks for each part of a frame apart (the 2-byte header,
        # the length, the payload in pieces of at most 16 KiB): one socket read of up
        # to _READ_AHEAD bytes serves several of those asks.
        ahead = self.ahead
        if ahead is not None:
            start = self._at
            data = ahead[start : start + size]
            self._at = start + len(data)
            if self._at >= len(ahead):
                self.ahead = None
        else:
            if self.deadline is not None:
                left = self.deadline - time.monotonic()
                if left <= 0:  # never a 0 s timeout: that is non-blocking mode
                    raise TimeoutError("timed out")
                self.real.settimeout(left)
            data = self.real.recv(max(size, _READ_AHEAD))
            if not data:
                return data
            self.last_received = time.monotonic()
            if len(data) > size:
                self.ahead, self._at = data, size
                data = data[:size]
        if self.budget is not None:
            self.budget -= len(data)
            if self.budget < 0:
                raise _TooBig("a message larger than max_message_size")
        return data

    def send(self, data: bytes) -> int:
        count = self.real.send(data)
        if count:
            self.last_sent = time.monotonic()
        return count


class Transport:
    """One WebSocket connection, blocking I/O. Thread-safe as described above."""

    def __init__(self, ws: Any, url: str, *, max_message_size: int | None = None) -> None:
        self._ws: Any = ws
        self._sock = _Socket(ws.sock)
        ws.sock = self._sock  # websocket-client now reads and writes through the counter
        self.url = url
        self.max_message_size = max_message_size
        #: The close code the server sent, once a close frame was received.
        self.close_code: int | None = None
        self._closing = False  # a close frame was sent or received: send nothing more
        self._ended = threading.Event()  # the reader saw the end (a close frame, or failure)
        self._state_lock = threading.Lock()
        # Every write (sends, pongs, close frames) takes this lock; try_send and
        # close can decline to wait for it.
        self._send_lock = threading.Lock()
        self._reading = False
        self._aborted = False
        # Reader state: the fragments of a message, appended in place.
        self._message: bytearray | None = None
        self._message_opcode = _TEXT
        self._arm_budget()

    @classmethod
    def connect(
        cls,
        url: str,
        *,
        timeout: float | None,
        max_message_size: int | None = None,
        **options: Any,
    ) -> Transport:
        """Open a WebSocket to ``url``.

        Args:
            url: ``ws://`` or ``wss://`` URL.
            timeout: seconds for the whole opening: TCP connect, TLS and the HTTP
                upgrade (a server trickling its response cannot stretch it).
            max_message_size: the largest message accepted, in bytes (None: no cap).
            options: passed to ``websocket.WebSocket.connect`` (proxy settings, headers).

        Raises:
            ConnectionFailedError: the connection could not be opened in time.
        """
        ws = websocket.WebSocket(
            skip_utf8_validation=True,  # checked here, strictly and faster
            # Every write goes through our own send lock (websocket-client writes nothing
            # of its own: pings and close frames are answered here), so its lock
            # would only be taken a second time.
            enable_multithread=False,
            sockopt=_SOCKET_OPTIONS,
        )
        if timeout is not None and timeout <= 0:
            raise ConnectionFailedError(f"cannot connect to {url}: timed out")
        # websocket-client bounds each read of the handshake, not the handshake: a
        # watchdog shuts the socket down when the whole attempt's time is up.
        expired = threading.Event()
        watchdog = None
        if timeout is not None:
            watchdog = threading.Timer(timeout, _expire, (ws, expired))
            watchdog.name = "diffusionmaster-connect-deadline"
            watchdog.daemon = True
            watchdog.start()
        try:
            try:
                ws.connect(url, timeout=timeout, suppress_origin=True, **options)  # type: ignore[no-untyped-call,unused-ignore]
            finally:
                if watchdog is not None:
                    watchdog.cancel()
                    watchdog.join()  # from here on, the watchdog cannot touch the socket
            if expired.is_set():
                raise TimeoutError("timed out")  # it fired just as the upgrade ended
        except _TRANSLATED as exc:
            with contextlib.suppress(Exception):
                ws.shutdown()  # type: ignore[no-untyped-call,unused-ignore]
            if expired.is_set():
                raise ConnectionFailedError(f"cannot connect to {url}: timed out") from exc
            raise _failure(f"cannot connect to {url}", exc) from exc
        return cls(ws, url, max_message_size=max_message_size)

    # -- timing --------------------------------------------------------------------

    def settimeout(self, timeout: float | None) -> None:
        """Bound every following read by ``timeout`` seconds from now, in total (None: none).

        Raises:
            ConnectionFailedError: the time is already up (a 0 s socket timeout
                would mean non-blocking mode, not "timed out").
        """
        if timeout is None:
            self._sock.deadline = None
            with contextlib.suppress(OSError):
                self._sock.real.settimeout(None)
            return
        if timeout <= 0:
            raise ConnectionFailedError("timed out")
        self._sock.deadline = time.monotonic() + timeout

    @property
    def last_received(self) -> float:
        """Monotonic time bytes last arrived (any bytes, not only whole frames)."""
        return self._sock.last_received

    @property
    def last_sent(self) -> float:
        """Monotonic time the socket last accepted bytes to send."""
        return self._sock.last_sent

    # -- sending ---------------------------------------------------------------------

    def send(self, text: str) -> None:
        """Send one text message; blocks until the socket took it all.

        Raises:
            ConnectionFailedError: the connection is broken or closing.
        """
        try:
            with self._send_lock:
                ws = self._ws
                if self._closing or ws is None:
                    raise _Closed()
                ws.send(text)
        except _TRANSLATED as exc:
            raise _failure("send failed", exc) from exc

    def try_send(self, text: str) -> bool:
        """Send a small text message only if that cannot block; return whether it was sent.

        Not sent while another send holds the lock or the socket has no room
        (a stalled link): the caller must not wait on either.

        Raises:
            ConnectionFailedError: the connection is broken or closing.
        """
        ws = self._ws
        if self._closing or ws is None:
            raise ConnectionFailedError("send failed: the connection is closed")
        try:
            if not self._send_lock.acquire(blocking=False):
                return False
            try:
                if not _writable(self._sock.real, 0):
                    return False
                ws.send(text)
            finally:
                self._send_lock.release()
        except _TRANSLATED as exc:
            raise _failure("send failed", exc) from exc
        return True

    # -- receiving -------------------------------------------------------------------

    def recv(self) -> str | bytes | bytearray | None:
        """Block until the next data message; return its payload, or None on a close frame.

        Text messages come back as ``str``; from 64 KiB up, as their undecoded (and
        checked) UTF-8 ``bytes``/``bytearray``, which
        :func:`~diffusionmaster.protocol.decode` reads without a full copy as ``str``.
        Binary messages come back as ``bytes``. Pings are answered (by websocket-client)
        and pongs skipped; a valid close frame is answered with a close frame.

        Raises:
            ConnectionFailedError: the connection broke, the read timed out, or the
                server broke the WebSocket protocol (then a close frame with the
                reason's code, 1002, 1007 or 1009, is sent before the socket is shut).
        """
        with self._state_lock:
            if self._ws is None or self._aborted:
                raise ConnectionFailedError("connection lost: the connection is closed")
            self._reading = True
        ended = True
        try:
            message = self._next_message()
            ended = message is None
            return message
        except _Violation as exc:
            logger.warning(
                "failing the connection to %s: %s (close code %d)", self.url, exc, exc.code
            )
            self._fail(exc.code)
            raise _failure("connection lost", exc) from exc
        except websocket.WebSocketProtocolException as exc:
            # websocket-client's own checks: reserved bits, opcodes, close codes.
            violation = _Violation(f"WebSocket protocol error: {exc}")
            logger.warning(
                "failing the connection to %s: %s (close code 1002)", self.url, violation
            )
            self._fail(PROTOCOL_ERROR)
            raise _failure("connection lost", violation) from exc
        except _TRANSLATED as exc:
            raise _failure("connection lost", exc) from exc
        finally:
            with self._state_lock:
                self._reading = False
                aborted = self._aborted
            if ended:
                self._ended.set()
                self._release()
            if aborted:
                self._close_socket()

    def _next_message(self) -> str | bytes | bytearray | None:
        # websocket-client reads each frame and checks it (reserved bits, opcodes,
        # close codes and lengths); control frames and fragments are handled here.
        ws = self._ws
        while True:
            frame = ws.recv_frame()
            opcode, fin = frame.opcode, frame.fin
            data: bytes = frame.data
            del frame
            if opcode >= _CLOSE:
                if len(data) > 125 or not fin:
                    raise _Violation("a control frame that is fragmented or longer than 125 bytes")
                self._arm_budget()
                if opcode == _CLOSE:
                    if len(data) >= 2:
                        self.close_code = int.from_bytes(data[:2], "big")
                        if not _valid_utf8(data[2:]):
                            raise _Violation("a close reason that is not UTF-8", INVALID_PAYLOAD)
                    # Answer with the same code (RFC 6455 §5.5.1), unless we sent ours.
                    self._send_control(_CLOSE, data[:2], closing=True)
                    return None
                if opcode == _PING:
                    self._send_control(_PONG, data)
                continue
            if opcode != _CONT:
                if self._message is not None:
                    raise _Violation("a new message inside a fragmented one")
                if fin:
                    self._arm_budget()
                    return self._payload(opcode, data)
                self._message, self._message_opcode = bytearray(data), opcode
            else:
                if self._message is None:
                    raise _Violation("a continuation frame outside a message")
                self._message += data  # in place: linear, unlike websocket-client's bytes +=
            del data
            if self.max_message_size is not None and len(self._message) > self.max_message_size:
                raise _TooBig("a message larger than max_message_size")
            self._arm_budget()
            if fin:
                message, self._message = self._message, None
                self._arm_budget()
                return self._payload(self._message_opcode, message)

    def _send_control(self, opcode: int, payload: bytes, *, closing: bool = False) -> None:
        # The reader answers a ping or a close frame; a failure shows at the next read.
        # Nothing is sent once a close frame has gone out.
        with self._send_lock:
            if self._closing or self._ws is None:
                return
            if closing:
                self._closing = True
            try:
                self._ws.send(payload, opcode)
            except _TRANSLATED as exc:
                logger.debug("could not answer a control frame: %s", exc)

    def _arm_budget(self) -> None:
        # The bytes that may arrive for the next frame: the rest of the message's budget.
        cap = self.max_message_size
        if cap is not None:
            held = len(self._message) if self._message is not None else 0
            self._sock.budget = cap - held + _HEADER_MAX
        else:
            self._sock.budget = None

    @staticmethod
    def _payload(opcode: int, data: bytes | bytearray) -> str | bytes | bytearray:
        if opcode == _BINARY:
            return bytes(data)
        if len(data) >= _DIRECT:
            if not _valid_utf8(data):
                raise _Violation("a text message that is not valid UTF-8", INVALID_PAYLOAD)
            return data  # decoded by protocol.decode, which cuts base64 out first
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise _Violation("a text message that is not valid UTF-8", INVALID_PAYLOAD) from exc

    def _fail(self, code: int) -> None:
        # Fail the WebSocket connection (RFC 6455 §7.1.7): a close frame if it can be
        # written at once, then the socket is shut. Nothing is sent after it.
        self._send_close(code, timeout=0.0)
        self.abort()

    # -- closing ---------------------------------------------------------------------

    def _send_close(self, code: int, timeout: float) -> None:
        ws = self._ws
        if self._closing or ws is None:
            return
        self._closing = True
        if not self._send_lock.acquire(
            timeout=timeout if timeout > 0 else -1, blocking=timeout > 0
        ):
            return  # a send is stuck: the close frame could not go out anyway
        try:
            if _writable(self._sock.real, timeout):
                ws.send(code.to_bytes(2, "big"), _CLOSE)
        except Exception as exc:  # the connection is ending anyway
            logger.debug("could not send a close frame: %s", exc)
        finally:
            self._send_lock.release()

    def abort(self) -> None:
        """Shut the socket down at once (no close frame); wakes a blocked ``recv``/``send``.

        The file descriptor is closed here, or by the reader as it leaves ``recv``.
        """
        with self._state_lock:
            self._aborted = True
            reading = self._reading
        with contextlib.suppress(Exception):
            self._sock.real.shutdown(socket.SHUT_RDWR)
        if not reading:
            self._close_socket()
            self._release()

    def close(self, code: int = 1000, timeout: float = CLOSE_WAIT) -> None:
        """Send a close frame, wait up to ``timeout`` for the server's, then shut down.

        Never blocks much longer than ``timeout``: a send stuck on a frozen link is
        not waited for. The wait happens only while a reader is in :meth:`recv`.
        """
        self._send_close(code, timeout=min(timeout, 0.5))
        with self._state_lock:
            reading = self._reading
        if reading:
            self._ended.wait(timeout)
        self.abort()

    def detach(self) -> None:
        """Forget the socket without shutting it down (after ``fork()``, in the child).

        ``shutdown()`` would cut the parent's connection too; closing our copy of the
        file descriptor does not.
        """
        self._close_socket()
        self._release()

    def _close_socket(self) -> None:
        with contextlib.suppress(Exception):
            self._sock.real.close()

    def _release(self) -> None:
        # Let go of websocket-client's object and its buffers (a partial frame of a
        # dead connection may be large) and of our partial message.
        self._message = None
        self._sock.ahead = None
        self._ws = None


def _expire(ws: Any, expired: threading.Event) -> None:
    # The connect watchdog: the attempt's time is up; wake the blocked handshake read.
    expired.set()
    sock = ws.sock
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
