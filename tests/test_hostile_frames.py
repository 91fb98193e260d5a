"""Hostile and broken servers at the frame and handshake level, against the real Client.

Each case puts a misbehaving peer between a real Client and the emulator (the
:class:`~tests.rawws.Proxy` injects bytes on the first connection, slows the
server's bytes down, or a raw server misbehaves in the handshake), and checks that
the hostile part costs at most that connection: the client answers it as RFC 6455
says (close 1002/1007/1009), reconnects, resumes, and the calls that follow are
answered, with memory bounded, no descriptor leaked and no thread dead.
"""

from __future__ import annotations

import contextlib
import gc
import os
import resource
import socket
import threading
import time
import tracemalloc
from collections.abc import Callable, Iterator

import pytest

import diffusionmaster
from diffusionmaster import ConnectionFailedError, Heartbeat, RequestTimeoutError
from diffusionmaster._transport import Transport
from diffusionmaster.connection import authenticate
from diffusionmaster.testing import Emulator

from .conftest import API_KEY, make_client, seconds
from .rawws import Proxy, RawServer, accept_response, frame, header

MiB = 1024 * 1024
#: A heartbeat short enough for tests: a dead link is found within about 1 unit.
FAST = Heartbeat(interval=seconds(0.5), timeout=seconds(0.5))


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def peak_rss() -> int:
    """The process's peak resident set size so far, in bytes (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


@contextlib.contextmanager
def proxied(emulator: Emulator, inject: bytes) -> Iterator[Proxy]:
    """A Proxy in front of the emulator that injects ``inject`` on connection 1."""
    proxy = Proxy(("127.0.0.1", emulator.port), inject=inject)
    try:
        yield proxy
    finally:
        proxy.close()


def survives(proxy: Proxy, emulator: Emulator, **options: object) -> list[tuple[int, bytes]]:
    """Connect through ``proxy``, see the injection fail connection 1, and a call answered
    on connection 2; return what the client sent on connection 1."""
    options.setdefault("heartbeat", FAST)
    with make_client(emulator, url=proxy.url, **options) as client:
        assert proxy.injected.wait(seconds(5))
        assert proxy.wait_for(lambda: proxy.connections == 2, seconds(5))
        session = client.session_uuid
        images = client.text2img("a cat after a hostile frame", model=4)
        assert len(images) == 1
        assert client.session_uuid == session  # resumed, not a new session
        assert client.state is diffusionmaster.State.CONNECTED
        assert proxy.connections == 2
    return proxy.client_frames[1]


@contextlib.contextmanager
def state_watch(client: diffusionmaster.Client) -> Iterator[threading.Event]:
    """An Event set when ``client`` leaves CONNECTED (its state listener sets it)."""
    left = threading.Event()

    def listener(state: diffusionmaster.State) -> None:
        if state is not diffusionmaster.State.CONNECTED:
            left.set()

    client.add_state_listener(listener)
    yield left


def close_code(frames: list[tuple[int, bytes]]) -> int | None:
    closes = [payload for opcode, payload in frames if opcode == 0x8]
    return int.from_bytes(closes[-1][:2], "big") if closes else None


def test_invalid_utf8_fails_the_connection_with_1007_and_the_client_resumes(
    emulator: Emulator,
) -> None:
    """A text frame with a lone surrogate is answered with close 1007, never decoded; calls go on."""
    with proxied(emulator, frame(0x1, b'{"pong": true, "x": "\xed\xa0\x80"}')) as proxy:
        assert close_code(survives(proxy, emulator)) == 1007


@pytest.mark.parametrize(
    "payload",
    [(1005).to_bytes(2, "big"), (999).to_bytes(2, "big"), (5000).to_bytes(2, "big"), b"\x03"],
    ids=["1005", "999", "5000", "1-byte"],
)
def test_a_bad_close_frame_fails_the_connection_with_1002_and_the_client_resumes(
    emulator: Emulator, payload: bytes
) -> None:
    """A close frame with an invalid code or a 1-byte payload is answered with 1002; calls go on."""
    with proxied(emulator, frame(0x8, payload)) as proxy:
        assert close_code(survives(proxy, emulator)) == 1002


def test_a_reserved_opcode_fails_with_1002(emulator: Emulator) -> None:
    """A reserved opcode is answered with 1002 at once; calls go on."""
    with proxied(emulator, frame(0x3, b"x")) as proxy:
        assert close_code(survives(proxy, emulator)) == 1002


def test_a_message_over_max_message_size_fails_with_1009_and_the_client_resumes(
    emulator: Emulator, caplog: pytest.LogCaptureFixture
) -> None:
    """A frame declaring 2 GiB, over max_message_size=1 MiB, fails the connection with 1009
    and a clear log line as soon as 1 MiB has arrived; calls go on."""
    before = peak_rss()
    with proxied(emulator, header(0x1, 2 * 1024 * MiB) + b"A" * (2 * MiB)) as proxy:
        frames = survives(proxy, emulator, max_message_size=MiB)
    assert close_code(frames) == 1009
    assert peak_rss() - before < 64 * MiB
    assert "a message larger than max_message_size (close code 1009)" in caplog.text


@pytest.mark.parametrize("declared", [2 * 1024 * MiB, 1 << 40])
def test_a_huge_frame_header_allocates_nothing_up_front(emulator: Emulator, declared: int) -> None:
    """A header declaring 2 GiB (or 2^40) with no cap grows memory only with the bytes that
    arrive; the stalled frame is found dead by the heartbeat and the client resumes."""
    proxy = Proxy(("127.0.0.1", emulator.port), inject=header(0x1, declared) + b"A" * MiB)
    try:
        before = peak_rss()
        survives(proxy, emulator, max_message_size=None)
        assert peak_rss() - before < 64 * MiB
    finally:
        proxy.close()


def test_a_slow_large_result_is_not_taken_for_a_dead_link(emulator: Emulator) -> None:
    """A 3 MB result arriving at 1 MB/s, far longer than the heartbeat's 1 unit, arrives on
    the first connection: bytes arriving are signs of life."""
    emulator.image_bytes = 2 * MiB  # about 2.7 MB of base64
    proxy = Proxy(("127.0.0.1", emulator.port), hostile=frozenset(), rate=MiB)
    heartbeat = Heartbeat(interval=0.25, timeout=0.25)  # fixed: must stay far below 3 s
    try:
        with make_client(
            emulator, url=proxy.url, heartbeat=heartbeat, timeout=seconds(30)
        ) as client:
            started = time.monotonic()
            [image] = client.text2img("a slow cat", model=4, return_base64=True)
            assert time.monotonic() - started > 2.0  # it did arrive slowly
            assert len(image.read()) >= 2 * MiB
            assert proxy.connections == 1
    finally:
        proxy.close()


def test_a_stalled_upload_returns_by_its_deadline_and_the_link_is_found_dead(
    emulator: Emulator,
) -> None:
    """A 30 MB upload into a frozen server raises RequestTimeoutError by its own deadline
    (well before the default heartbeat's 10 s), the half-written connection is dropped,
    and after the thaw the client resumes and the next call is answered."""
    png = b"\x89PNG\r\n\x1a\n" + os.urandom(30 * MiB)
    with make_client(emulator) as client, state_watch(client) as left:
        emulator.freeze()
        started = time.monotonic()
        with pytest.raises(RequestTimeoutError):
            client.upload_image(png, timeout=seconds(2))
        assert time.monotonic() - started < seconds(2) + seconds(1)
        assert left.wait(seconds(1))
        emulator.thaw()
        assert len(client.text2img("a cat after the thaw", model=4)) == 1


def test_a_frozen_link_is_found_dead_within_interval_plus_timeout(emulator: Emulator) -> None:
    """With the server frozen, the client leaves CONNECTED within the heartbeat's interval plus
    timeout (plus one unit of slack)."""
    with make_client(emulator, heartbeat=FAST) as client, state_watch(client) as left:
        emulator.freeze()
        started = time.monotonic()
        assert left.wait(seconds(5))
        detected = time.monotonic() - started
        emulator.thaw()
        assert detected <= seconds(0.5) + seconds(0.5) + seconds(1)
        assert len(client.text2img("a cat after the thaw", model=4)) == 1


def _trickle(conn: socket.socket, data: bytes, stop: threading.Event, step: float) -> None:
    for byte in data:
        if stop.wait(step):  # pacing a hostile server, not waiting for something
            return
        try:
            conn.sendall(bytes((byte,)))
        except OSError:
            return


def _endless_headers(conn: socket.socket, stop: threading.Event) -> None:
    conn.sendall(b"HTTP/1.1 101 Switching Protocols\r\n")
    while not stop.is_set():
        try:
            conn.sendall(b"X-Padding: " + b"x" * 1000 + b"\r\n")
        except OSError:
            return


def _trickled_response(conn: socket.socket, request: bytes, stop: threading.Event) -> None:
    _trickle(conn, accept_response(request), stop, 0.1)


@pytest.mark.parametrize(
    "respond",
    [
        pytest.param(_trickled_response, id="101 response one byte per 0.1 s"),
        pytest.param(
            lambda conn, request, stop: _endless_headers(conn, stop), id="endless headers"
        ),
    ],
)
def test_a_stalling_handshake_is_bounded_by_connect_timeout(
    respond: Callable[[socket.socket, bytes, threading.Event], None],
) -> None:
    """A server that trickles its 101 response, or sends header lines forever, cannot
    hold Client() past connect_timeout."""
    stop = threading.Event()
    server = RawServer(lambda conn, request: respond(conn, request, stop))
    try:
        started = time.monotonic()
        with pytest.raises(ConnectionFailedError, match="timed out"):
            diffusionmaster.Client(API_KEY, url=server.url, connect_timeout=seconds(1))
        assert time.monotonic() - started < seconds(1) + seconds(1)
    finally:
        stop.set()
        server.close()


def test_a_trickled_authentication_reply_is_bounded_by_connect_timeout() -> None:
    """An authentication reply sent one byte per 0.1 s cannot stretch the attempt past its deadline."""
    stop = threading.Event()
    reply = frame(
        0x1, b'{"newConnectionSessionUUID": {"connectionSessionUUID": "' + b"a" * 36 + b'"}}'
    )

    def respond(conn: socket.socket, request: bytes) -> None:
        conn.sendall(accept_response(request))
        _trickle(conn, reply, stop, 0.1)

    server = RawServer(respond)
    try:
        started = time.monotonic()
        with pytest.raises(ConnectionFailedError, match="timed out"):
            authenticate(server.url, API_KEY, None, timeout=seconds(1), options={})
        assert time.monotonic() - started < seconds(1) + seconds(1)
    finally:
        stop.set()
        server.close()


def test_an_expired_deadline_fails_as_timed_out_not_as_nonblocking() -> None:
    """settimeout(0) fails with "timed out" instead of setting non-blocking mode."""
    server = RawServer()
    try:
        transport = Transport.connect(server.url, timeout=seconds(5))
        with pytest.raises(ConnectionFailedError, match=r"^timed out$"):
            transport.settimeout(0.0)
        transport.abort()
    finally:
        server.close()


def test_abort_closes_the_file_descriptor() -> None:
    """abort() with no reader closes the socket's descriptor at once."""
    server = RawServer()
    try:
        before = open_fds()
        transport = Transport.connect(server.url, timeout=seconds(5))
        assert open_fds() == before + 2  # the client's socket and the server's
        transport.abort()
        assert open_fds() == before + 1
    finally:
        server.close()


def test_500_forced_reconnects_leave_no_descriptor_open(emulator: Emulator) -> None:
    """500 dropped connections, each reconnected and resumed, leave the descriptor count unchanged."""
    immediate = diffusionmaster.Reconnect(resume_window=seconds(5), min_delay=0, max_delay=0)
    reconnected = threading.Condition()
    count = [0]

    def listener(state: diffusionmaster.State) -> None:
        if state is diffusionmaster.State.CONNECTED:
            with reconnected:
                count[0] += 1
                reconnected.notify_all()

    with make_client(emulator, reconnect=immediate) as client:
        client.add_state_listener(listener)
        client.text2img("warm up", model=4)
        before = open_fds()
        for n in range(500):
            emulator.drop_connections()
            with reconnected:
                assert reconnected.wait_for(lambda n=n: count[0] == n + 1, seconds(5))
        assert len(client.text2img("after 500 reconnects", model=4)) == 1
        assert emulator.connections_opened == 501
        # The count includes the emulator's own descriptors (same process), which
        # may be fewer at the end than at the start; never more.
        assert open_fds() <= before


def test_a_dead_connections_partial_frame_is_released(emulator: Emulator) -> None:
    """The 20 MB partial frame of a connection found dead is freed with it."""
    inject = header(0x1, 100 * MiB) + b"A" * (20 * MiB)
    tracemalloc.start()
    try:
        with (
            proxied(emulator, inject) as proxy,
            make_client(emulator, url=proxy.url, heartbeat=FAST, max_message_size=None) as client,
        ):
            assert proxy.injected.wait(seconds(5))
            assert proxy.wait_for(lambda: proxy.connections == 2, seconds(10))
            assert len(client.text2img("after the partial frame", model=4)) == 1
            gc.collect()
            held, peak = tracemalloc.get_traced_memory()
        assert peak >= 20 * MiB  # the partial frame was read...
        assert held < 5 * MiB  # ...and is gone with its connection
    finally:
        tracemalloc.stop()
