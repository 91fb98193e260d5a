"""The transport (websocket-client's framing, our checks) against a raw socket server.

The emulator (the ``websockets`` library) never fragments, masks, pings or breaks
the protocol, so these tests talk to a bare TCP server that completes the opening
handshake and then writes exactly the bytes each test chooses. The Autobahn-style
cases are in test_conformance.py.
"""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Iterator

import pytest

import diffusionmaster
from diffusionmaster._transport import Transport
from diffusionmaster.errors import ConnectionFailedError, InvalidArgumentError

from .conftest import seconds
from .rawws import RawServer, frame


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
    opcode, payload = server.read_frame()
    assert (opcode, payload.decode()) == (0x1, text)
    assert server.read_frame() == (0x1, b"second")


def test_close_sends_a_close_frame(server: RawServer, transport: Transport) -> None:
    """close() sends a close frame with the code, then shuts the socket down."""
    transport.close(1001)
    assert server.read_frame()[:2] == (0x8, (1001).to_bytes(2, "big"))
    assert server.connected().recv(1) == b""


@pytest.mark.skipif(not hasattr(socket, "TCP_USER_TIMEOUT"), reason="Linux socket options")
def test_the_socket_has_keepalive_and_a_user_timeout(
    server: RawServer, transport: Transport
) -> None:
    """The client socket has TCP_NODELAY, keepalive and a 60 s TCP_USER_TIMEOUT set."""
    sock = socket.fromfd(transport._sock.real.fileno(), socket.AF_INET, socket.SOCK_STREAM)
    try:
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT) == 60_000
    finally:
        sock.close()


@pytest.mark.parametrize("value", [0, 1023, -1, 1.5, "big", True])
def test_a_bad_max_message_size_is_refused_before_connecting(value: object) -> None:
    """Client(max_message_size=...) takes an int >= 1024 or None, checked before any connection."""
    with pytest.raises(
        InvalidArgumentError, match=r"^max_message_size: must be an integer >= 1024"
    ):
        diffusionmaster.Client("key", url="ws://127.0.0.1:9/", max_message_size=value)  # type: ignore[arg-type]


def test_a_socket_above_fd_setsize_still_takes_heartbeats_and_close_frames(
    server: RawServer,
) -> None:
    """With its descriptor above 1024 (select's limit), the transport still sends a
    non-blocking ping and its close frame."""
    filler = []
    try:
        while len(filler) < 1100:
            filler.append(os.open(os.devnull, os.O_RDONLY))
        conn = Transport.connect(server.url, timeout=seconds(5))
        try:
            assert conn._sock.real.fileno() > 1024
            assert conn.try_send('{"ping":true}') is True
            assert server.read_frame() == (0x1, b'{"ping":true}')
        finally:
            conn.close(timeout=seconds(1))
        assert server.read_frame() == (0x8, (1000).to_bytes(2, "big"))
    finally:
        for fd in filler:
            os.close(fd)
