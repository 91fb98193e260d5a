"""The transport's own WebSocket framing (RFC 6455 §5), against a raw socket server.

The emulator (the ``websockets`` library) never fragments, masks, pings or breaks
the protocol, so these tests talk to a bare TCP server that completes the opening
handshake and then writes exactly the bytes each test chooses.
"""

from __future__ import annotations

import base64
import hashlib
import os
import socket
import threading
from collections.abc import Iterator

import pytest

from diffusionmaster._transport import Transport
from diffusionmaster.errors import ConnectionFailedError

from .conftest import seconds

_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def frame(opcode: int, payload: bytes, *, fin: bool = True, key: bytes = b"") -> bytes:
    """A server frame: unmasked unless ``key`` is given."""
    size = len(payload)
    first = (0x80 if fin else 0) | opcode
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


class RawServer:
    """Accepts one WebSocket connection; then the test writes and reads raw frames."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"ws://127.0.0.1:{self.listener.getsockname()[1]}/v1/"
        self.conn: socket.socket | None = None
        self._thread = threading.Thread(target=self._accept, name="test-raw-ws-server")
        self._thread.start()

    def _accept(self) -> None:
        conn, _ = self.listener.accept()
        request = b""
        while b"\r\n\r\n" not in request:
            request += conn.recv(4096)
        key = next(
            line.split(b":", 1)[1].strip()
            for line in request.split(b"\r\n")
            if line.lower().startswith(b"sec-websocket-key:")
        )
        accept = base64.b64encode(hashlib.sha1(key + _GUID).digest())
        conn.sendall(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + accept + b"\r\n\r\n"
        )
        self.conn = conn

    def connected(self) -> socket.socket:
        self._thread.join(seconds(5))
        assert self.conn is not None
        return self.conn

    def send(self, data: bytes) -> None:
        self.connected().sendall(data)

    def _exactly(self, size: int) -> bytes:
        data = b""
        while len(data) < size:
            chunk = self.connected().recv(size - len(data))
            assert chunk, "the client closed the connection"
            data += chunk
        return data

    def read_frame(self) -> tuple[int, bytes, bytes]:
        """Read one client frame: (opcode, unmasked payload, mask key)."""
        first, second = self._exactly(2)
        assert first & 0x80, "the client fragments nothing"
        assert second & 0x80, "client frames must be masked"
        size = second & 0x7F
        if size == 126:
            size = int.from_bytes(self._exactly(2), "big")
        elif size == 127:
            size = int.from_bytes(self._exactly(8), "big")
        key = self._exactly(4)
        masked = self._exactly(size)
        payload = (
            int.from_bytes(masked, "little")
            ^ int.from_bytes((key * (size // 4 + 1))[:size], "little")
        ).to_bytes(size, "little")
        return first & 0x0F, payload, key

    def close(self) -> None:
        self._thread.join(seconds(5))
        if self.conn is not None:
            self.conn.close()
        self.listener.close()


@pytest.fixture
def server() -> Iterator[RawServer]:
    raw = RawServer()
    yield raw
    raw.close()


@pytest.fixture
def transport(server: RawServer) -> Iterator[Transport]:
    conn = Transport.connect(server.url, timeout=seconds(5))
    conn.settimeout(seconds(5))  # a bug must fail the test, not hang it
    yield conn
    conn.close()


@pytest.mark.parametrize("size", [0, 5, 125, 126, 65535, 65536, 300_000, 3_000_001])
def test_text_frames_of_every_length_form_arrive_whole(
    server: RawServer, transport: Transport, size: int
) -> None:
    """Text frames with 7-bit, 16-bit and 64-bit lengths arrive whole: as str, or from
    64 KiB up as their UTF-8 bytearray (which protocol.decode reads)."""
    text = ("0123456789abcdef" * (size // 16 + 1))[:size]
    server.send(frame(0x1, text.encode()) + frame(0x1, b"next"))
    received = transport.recv()
    if size < 64 * 1024:
        assert received == text
    else:
        assert isinstance(received, (bytes, bytearray))
        assert received.decode() == text
    assert transport.recv() == "next"


def test_a_frame_split_into_many_writes_is_reassembled(
    server: RawServer, transport: Transport
) -> None:
    """A frame written a few bytes at a time arrives as one message."""
    data = frame(0x1, b'{"pong":true}' * 20)
    for start in range(0, len(data), 7):
        server.send(data[start : start + 7])
    assert transport.recv() == '{"pong":true}' * 20


def test_binary_frames_arrive_as_bytes(server: RawServer, transport: Transport) -> None:
    """A binary frame's payload comes back as bytes."""
    server.send(frame(0x2, b"\x00\x01\xff"))
    assert transport.recv() == b"\x00\x01\xff"


def test_invalid_utf8_text_fails_the_connection_with_1007(
    server: RawServer, transport: Transport
) -> None:
    """A text frame that is not UTF-8 is never returned: the client closes with 1007."""
    server.send(frame(0x1, b"\xff\xfe{}"))
    with pytest.raises(ConnectionFailedError, match="not valid UTF-8 \\(close code 1007\\)"):
        transport.recv()
    assert server.read_frame()[:2] == (0x8, (1007).to_bytes(2, "big"))


def test_a_fragmented_message_with_a_ping_inside_is_joined_and_the_ping_answered(
    server: RawServer, transport: Transport
) -> None:
    """Continuation frames are joined; a ping between them is answered with its payload."""
    server.send(
        frame(0x1, b'{"pong"', fin=False) + frame(0x9, b"are you there")
        + frame(0x0, b":tr", fin=False) + frame(0x0, b"ue}")
    )  # fmt: skip
    assert transport.recv() == '{"pong":true}'
    assert server.read_frame()[:2] == (0xA, b"are you there")


def test_pongs_are_skipped(server: RawServer, transport: Transport) -> None:
    """An unsolicited pong is not returned as data."""
    server.send(frame(0xA, b"beat") + frame(0x1, b"data"))
    assert transport.recv() == "data"


def test_a_masked_server_frame_is_unmasked(server: RawServer, transport: Transport) -> None:
    """A masked frame from the server (tolerated, like websocket-client) is unmasked."""
    server.send(frame(0x1, b'{"pong":true}', key=b"\x01\x02\x03\x04"))
    assert transport.recv() == '{"pong":true}'


def test_a_close_frame_returns_none_with_its_code_and_is_answered(
    server: RawServer, transport: Transport
) -> None:
    """A close frame ends recv() with None and close_code set; the client echoes the code."""
    server.send(frame(0x8, (1008).to_bytes(2, "big") + b"Invalid API key"))
    assert transport.recv() is None
    assert transport.close_code == 1008
    assert server.read_frame()[:2] == (0x8, (1008).to_bytes(2, "big"))


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (bytes((0xC1, 0x00)), "rsv is not implemented"),
        (frame(0x0, b"orphan"), "continuation frame outside a message"),
        (frame(0x1, b"a", fin=False) + frame(0x1, b"b"), "new message inside"),
        (frame(0xA, b"x" * 126), "control frame"),
        (frame(0x3, b"x"), "Invalid opcode 3"),
        (frame(0xB, b"x"), "Invalid opcode 11"),
    ],
)
def test_protocol_violations_fail_the_connection(
    server: RawServer, transport: Transport, data: bytes, message: str
) -> None:
    """A frame that breaks RFC 6455 raises ConnectionFailedError naming the problem, after
    a close frame with code 1002."""
    server.send(data)
    with pytest.raises(ConnectionFailedError, match=message):
        transport.recv()
    assert server.read_frame()[:2] == (0x8, (1002).to_bytes(2, "big"))


def test_a_connection_closed_mid_frame_fails(server: RawServer, transport: Transport) -> None:
    """The TCP connection ending inside a frame raises ConnectionFailedError."""
    server.send(frame(0x1, b"x" * 1000)[:500])
    server.connected().shutdown(socket.SHUT_WR)
    with pytest.raises(ConnectionFailedError, match="closed the TCP connection"):
        transport.recv()


def test_a_read_timeout_fails_as_timed_out(server: RawServer, transport: Transport) -> None:
    """A read that outlasts the timeout raises ConnectionFailedError saying so."""
    transport.settimeout(seconds(0.05))
    with pytest.raises(ConnectionFailedError, match="timed out"):
        transport.recv()


def test_abort_wakes_a_blocked_recv(server: RawServer, transport: Transport) -> None:
    """abort() from another thread ends a recv() blocked on the socket."""
    transport.settimeout(None)
    failed: list[BaseException] = []

    def read() -> None:
        try:
            transport.recv()
        except BaseException as exc:
            failed.append(exc)

    reader = threading.Thread(target=read)
    reader.start()
    transport.abort()
    reader.join(seconds(5))
    assert not reader.is_alive()
    assert isinstance(failed[0], ConnectionFailedError)


@pytest.mark.parametrize("size", [0, 10, 200, 70_000, 256 * 1024, 1_000_003])
def test_sent_text_arrives_masked_and_whole(
    server: RawServer, transport: Transport, size: int
) -> None:
    """send() writes one final, masked text frame whose payload unmasks to the text."""
    text = os.urandom(size // 2 + 1).hex()[:size]
    transport.send(text)
    transport.send("second")
    opcode, payload, first_key = server.read_frame()
    assert (opcode, payload.decode()) == (0x1, text)
    opcode, payload, second_key = server.read_frame()
    assert (opcode, payload, second_key != first_key) == (0x1, b"second", True)


def test_close_sends_a_close_frame(server: RawServer, transport: Transport) -> None:
    """close() sends a close frame with the code, then shuts the socket down."""
    transport.close(1001)
    assert server.read_frame()[:2] == (0x8, (1001).to_bytes(2, "big"))
    assert server.connected().recv(1) == b""
