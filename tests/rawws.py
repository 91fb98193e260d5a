"""Raw WebSocket peers for tests: plain sockets, our own handshake and frames.

The emulator (the ``websockets`` library) never breaks the protocol, so the tests of
framing and of hostile servers talk to these instead: :class:`RawServer` completes
the opening handshake and then writes exactly the bytes a test chooses;
:class:`Proxy` stands between a client and the emulator, forwards every frame, and
on chosen connections injects bytes, slows the server's bytes down, or freezes.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import socket
import threading
from collections.abc import Callable

from .conftest import seconds

_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def frame(
    opcode: int, payload: bytes, *, fin: bool = True, key: bytes = b"", rsv: int = 0
) -> bytes:
    """A server frame: unmasked unless ``key`` is given; ``rsv`` sets bits 4-6 of byte 0."""
    size = len(payload)
    first = (0x80 if fin else 0) | (rsv << 4) | opcode
    mask = 0x80 if key else 0
    if size < 126:
        head = bytes((first, mask | size))
    elif size < 1 << 16:
        head = bytes((first, mask | 126)) + size.to_bytes(2, "big")
    else:
        head = bytes((first, mask | 127)) + size.to_bytes(8, "big")
    if key:
        payload = bytes(b ^ key[i % 4] for i, b in enumerate(payload))
    return head + key + payload


def header(opcode: int, size: int) -> bytes:
    """The header alone of a final, unmasked server frame declaring ``size`` bytes."""
    if size < 126:
        return bytes((0x80 | opcode, size))
    if size < 1 << 16:
        return bytes((0x80 | opcode, 126)) + size.to_bytes(2, "big")
    return bytes((0x80 | opcode, 127)) + size.to_bytes(8, "big")


def read_request(conn: socket.socket) -> bytes:
    """Read an HTTP request head (up to the blank line)."""
    request = b""
    while b"\r\n\r\n" not in request:
        chunk = conn.recv(4096)
        if not chunk:
            raise ConnectionError("the client went away during the handshake")
        request += chunk
    return request


def accept_response(request: bytes) -> bytes:
    """The 101 response to a WebSocket upgrade request."""
    key = next(
        line.split(b":", 1)[1].strip()
        for line in request.split(b"\r\n")
        if line.lower().startswith(b"sec-websocket-key:")
    )
    accept = base64.b64encode(hashlib.sha1(key + _GUID).digest())
    return (
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
        b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + accept + b"\r\n\r\n"
    )


def exactly(conn: socket.socket, size: int) -> bytes:
    """Read exactly ``size`` bytes; raise EOFError if the peer closes first."""
    data = b""
    while len(data) < size:
        chunk = conn.recv(min(size - len(data), 1 << 20))
        if not chunk:
            raise EOFError
        data += chunk
    return data


def read_frame(conn: socket.socket, *, masked: bool = True) -> tuple[bool, int, bytes]:
    """Read one frame: (fin, opcode, unmasked payload). Client frames must be masked."""
    first, second = exactly(conn, 2)
    assert bool(second & 0x80) == masked, "client frames are masked, server frames are not"
    size = second & 0x7F
    if size == 126:
        size = int.from_bytes(exactly(conn, 2), "big")
    elif size == 127:
        size = int.from_bytes(exactly(conn, 8), "big")
    key = exactly(conn, 4) if masked else b""
    payload = exactly(conn, size)
    if key:
        payload = (
            int.from_bytes(payload, "little")
            ^ int.from_bytes((key * (size // 4 + 1))[:size], "little")
        ).to_bytes(size, "little")
    return bool(first & 0x80), first & 0x0F, payload


def frames_until_eof(conn: socket.socket, timeout: float) -> list[tuple[int, bytes]]:
    """Every (opcode, payload) the client sends until it closes the TCP connection."""
    conn.settimeout(timeout)
    frames = []
    try:
        while True:
            fin, opcode, payload = read_frame(conn)
            assert fin, "the client fragments nothing"
            frames.append((opcode, payload))
    except (EOFError, ConnectionResetError):
        return frames


class RawServer:
    """Accepts one WebSocket connection; then the test writes and reads raw frames."""

    def __init__(self, respond: Callable[[socket.socket, bytes], None] | None = None) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"ws://127.0.0.1:{self.listener.getsockname()[1]}/v1/"
        self.conn: socket.socket | None = None
        self._respond = respond
        self._thread = threading.Thread(target=self._accept, name="test-raw-ws-server")
        self._thread.start()

    def _accept(self) -> None:
        try:
            conn, _ = self.listener.accept()
        except OSError:
            return  # closed before anyone connected
        self.conn = conn
        request = read_request(conn)
        if self._respond is not None:
            self._respond(conn, request)
        else:
            conn.sendall(accept_response(request))

    def connected(self) -> socket.socket:
        self._thread.join(seconds(5))
        assert self.conn is not None
        return self.conn

    def send(self, data: bytes) -> None:
        self.connected().sendall(data)

    def read_frame(self) -> tuple[int, bytes]:
        """Read one client frame: (opcode, unmasked payload)."""
        fin, opcode, payload = read_frame(self.connected())
        assert fin, "the client fragments nothing"
        return opcode, payload

    def frames_until_eof(self) -> list[tuple[int, bytes]]:
        return frames_until_eof(self.connected(), seconds(5))

    def close(self) -> None:
        _shut(self.listener)  # wakes accept() (close() alone does not)
        self.listener.close()
        if self.conn is not None:
            _shut(self.conn)  # wakes a response still being written
        self._thread.join(seconds(5))
        if self.conn is not None:
            self.conn.close()


class Proxy:
    """A TCP proxy in front of a WebSocket server that can misbehave per connection.

    Connections are numbered from 1 in the order the client opens them. For the
    connections in ``hostile`` the proxy writes ``inject`` to the client right after
    the server's first data frame (the authentication reply) and forwards nothing
    from the server after it. ``rate`` (bytes per second) slows down everything the
    server sends. Client frames are recorded per connection.
    """

    def __init__(
        self,
        upstream: tuple[str, int],
        *,
        inject: bytes = b"",
        hostile: frozenset[int] = frozenset({1}),
        rate: float | None = None,
    ) -> None:
        self.upstream = upstream
        self.inject = inject
        self.hostile = hostile
        self.rate = rate
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"ws://127.0.0.1:{self.listener.getsockname()[1]}/v1/"
        self.client_frames: dict[int, list[tuple[int, bytes]]] = {}
        self.injected = threading.Event()
        self._count = 0
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._closed = threading.Event()
        self._sockets: list[socket.socket] = []
        self._threads: list[threading.Thread] = []
        self._start(self._accept_loop, "test-proxy-accept")

    @property
    def connections(self) -> int:
        return self._count

    def wait_for(self, predicate: Callable[[], bool], timeout: float) -> bool:
        """Wait until ``predicate()`` is true, re-checked at each connection, injection
        and client frame; return its last value."""
        with self._changed:
            return self._changed.wait_for(predicate, timeout)

    def _notify(self) -> None:
        with self._changed:
            self._changed.notify_all()

    def _start(self, target: Callable[..., None], name: str, *args: object) -> None:
        thread = threading.Thread(target=target, name=name, args=args, daemon=True)
        with self._lock:
            self._threads.append(thread)
        thread.start()

    def _accept_loop(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.upstream)
            with self._lock:
                self._count += 1
                number = self._count
                self._sockets += [client, upstream]
                self.client_frames[number] = []
                self._changed.notify_all()
            self._start(self._up, f"test-proxy-up-{number}", client, upstream, number)
            self._start(self._down, f"test-proxy-down-{number}", client, upstream, number)

    def _up(self, client: socket.socket, upstream: socket.socket, number: int) -> None:
        # Client -> server: the handshake as is, then frame by frame (recorded).
        try:
            upstream.sendall(read_request(client))
            while True:
                fin, opcode, payload = read_frame(client)
                self.client_frames[number].append((opcode, payload))
                self._notify()
                upstream.sendall(frame(opcode, payload, fin=fin, key=b"\x00\x00\x00\x00"))
        except (OSError, EOFError, ConnectionError):
            return
        finally:
            _shut(upstream)

    def _down(self, client: socket.socket, upstream: socket.socket, number: int) -> None:
        # Server -> client: the handshake response, then frame by frame.
        try:
            response = b""
            while b"\r\n\r\n" not in response:
                chunk = upstream.recv(4096)
                if not chunk:
                    raise EOFError
                response += chunk
            self._write(client, response)
            while True:
                fin, opcode, payload = read_frame(upstream, masked=False)
                self._write(client, frame(opcode, payload, fin=fin))
                if number in self.hostile and opcode == 0x1:
                    self._write(client, self.inject)
                    self.injected.set()
                    self._notify()
                    self._closed.wait()  # forward nothing more on this connection
                    return
        except (OSError, EOFError, ConnectionError):
            return
        finally:
            _shut(client)

    def _write(self, client: socket.socket, data: bytes) -> None:
        if self.rate is None:
            client.sendall(data)
            return
        piece = max(1, int(self.rate / 50))  # 50 writes per second: pacing, not waiting
        for start in range(0, len(data), piece):
            if self._closed.wait(1 / 50):
                raise EOFError
            client.sendall(data[start : start + piece])

    def close(self) -> None:
        self._closed.set()
        _shut(self.listener)  # wakes accept() (close() alone does not)
        self.listener.close()
        with self._lock:
            sockets, threads = list(self._sockets), list(self._threads)
        for sock in sockets:
            _shut(sock)
        for thread in threads:
            thread.join(seconds(5))
        for sock in sockets:
            sock.close()


def _shut(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
