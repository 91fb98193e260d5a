"""Client-side conformance (RFC 6455), after the Autobahn testsuite's categories 1 to 7.

A raw server (plain sockets, our own handshake) sends each case's frames to the
real :class:`~diffusionmaster._transport.Transport`, which reads until the connection
ends (a close frame, or a failure); the client then shuts its socket as
``Connection`` does, and the server records every frame the client sent. The
expectations are Autobahn's: a message arrives whole; a ping gets a pong with its
payload; a protocol error fails the connection with close code 1002, invalid UTF-8
with 1007; a close frame is answered once, and nothing is sent after it. (Autobahn's
client cases expect an echo client; this client sends nothing of its own, so the
cases check what it returns and answers instead.) Case ids are Autobahn's numbers.
"""

from __future__ import annotations

import socket
import threading
import time
from dataclasses import dataclass, field

import pytest

from diffusionmaster._transport import CLOSE_WAIT, Transport
from diffusionmaster.errors import ConnectionFailedError

from .conftest import seconds
from .rawws import RawServer, frame

TEXT, BINARY, CONT, CLOSE, PING, PONG = 0x1, 0x2, 0x0, 0x8, 0x9, 0xA


def code(n: int) -> bytes:
    return n.to_bytes(2, "big")


def close(n: int = 1000, reason: bytes = b"") -> bytes:
    return frame(CLOSE, code(n) + reason)


#: The client's answer when it fails the connection with a protocol error.
FAIL_1002 = [(CLOSE, code(1002))]
#: ... with invalid UTF-8.
FAIL_1007 = [(CLOSE, code(1007))]


@dataclass
class Outcome:
    messages: list[object] = field(default_factory=list)  # recv() results; None: a close
    error: str | None = None  # the ConnectionFailedError's message
    answers: list[tuple[int, bytes]] = field(default_factory=list)  # frames the client sent


def run(data: bytes, *, chop: int | None = None) -> Outcome:
    """Send ``data`` (in writes of ``chop`` bytes if given); read until the end."""
    server = RawServer()
    outcome = Outcome()
    try:
        transport = Transport.connect(server.url, timeout=seconds(5))
        transport.settimeout(seconds(5))  # a bug must fail the test, not hang it
        conn = server.connected()
        writer = threading.Thread(target=_write, args=(conn, data, chop or len(data) or 1))
        writer.start()
        try:
            while True:
                message = transport.recv()
                outcome.messages.append(message)
                if message is None:
                    break
        except ConnectionFailedError as exc:
            outcome.error = str(exc)
        finally:
            transport.abort()  # what Connection does when its reader ends
            writer.join(seconds(5))
        outcome.answers = server.frames_until_eof()
    finally:
        server.close()
    return outcome


def _write(conn: socket.socket, data: bytes, step: int) -> None:
    try:
        for start in range(0, len(data), step):
            conn.sendall(data[start : start + step])
    except OSError:
        return  # the client failed the connection before everything was written


def closed_normally(*messages: object, answers: list[tuple[int, bytes]] | None = None) -> Outcome:
    """The outcome of a case that ends with the server's close 1000."""
    return Outcome([*messages, None], None, [*(answers or []), (CLOSE, code(1000))])


def failed(
    *messages: object, with_code: int = 1002, answers: list[tuple[int, bytes]] | None = None
) -> Outcome:
    """The outcome of a case the client must fail (the error text is checked apart)."""
    return Outcome(list(messages), "", [*(answers or []), (CLOSE, code(with_code))])


def check(outcome: Outcome, expected: Outcome) -> None:
    assert outcome.messages == expected.messages
    assert outcome.answers == expected.answers
    if expected.error is None:
        assert outcome.error is None
    else:
        assert outcome.error is not None
        assert (
            f"close code {expected.answers[-1][1][0] << 8 | expected.answers[-1][1][1]}"
            in outcome.error
        )


# -- 1: framing -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("opcode", "size", "chop"),
    [
        pytest.param(op, size, chop, id=f"1.{op}.{n}")
        for op in (TEXT, BINARY)
        for n, (size, chop) in enumerate(
            [
                (0, None),
                (125, None),
                (126, None),
                (127, None),
                (128, None),
                (65535, None),
                (65536, None),
                (65536, 997),
            ],
            start=1,
        )
    ],
)
def test_1_messages_of_every_length_arrive_whole(opcode: int, size: int, chop: int | None) -> None:
    """Text and binary messages of the boundary lengths arrive whole, written whole or chopped."""
    payload = b"*" * size
    outcome = run(frame(opcode, payload) + close(), chop=chop)
    expected: object = payload if opcode == BINARY else payload.decode()
    if opcode == TEXT and size >= 64 * 1024:
        outcome.messages[0] = bytes(outcome.messages[0])  # type: ignore[arg-type]
        expected = payload
    check(outcome, closed_normally(expected))


# -- 2: pings and pongs -------------------------------------------------------------------

BIN = bytes(range(8)) + b"\xfe\xff"


@pytest.mark.parametrize(
    ("data", "chop", "expected"),
    [
        pytest.param(
            frame(PING, b"") + close(), None, closed_normally(answers=[(PONG, b"")]), id="2.1"
        ),
        pytest.param(
            frame(PING, b"Hello, world!") + close(),
            None,
            closed_normally(answers=[(PONG, b"Hello, world!")]),
            id="2.2",
        ),
        pytest.param(
            frame(PING, BIN) + close(), None, closed_normally(answers=[(PONG, BIN)]), id="2.3"
        ),
        pytest.param(
            frame(PING, b"\xfe" * 125) + close(),
            None,
            closed_normally(answers=[(PONG, b"\xfe" * 125)]),
            id="2.4",
        ),
        pytest.param(frame(PING, b"\xfe" * 126) + close(), None, failed(), id="2.5"),
        pytest.param(
            frame(PING, b"\xfe" * 125) + close(),
            1,
            closed_normally(answers=[(PONG, b"\xfe" * 125)]),
            id="2.6",
        ),
        pytest.param(frame(PONG, b"") + close(), None, closed_normally(), id="2.7"),
        pytest.param(
            frame(PONG, b"unsolicited pong payload") + close(), None, closed_normally(), id="2.8"
        ),
        pytest.param(
            frame(PONG, b"unsolicited") + frame(PING, b"ping payload") + close(),
            None,
            closed_normally(answers=[(PONG, b"ping payload")]),
            id="2.9",
        ),
        pytest.param(
            b"".join(frame(PING, b"payload-%d" % n) for n in range(10)) + close(),
            None,
            closed_normally(answers=[(PONG, b"payload-%d" % n) for n in range(10)]),
            id="2.10",
        ),
        pytest.param(
            b"".join(frame(PING, b"payload-%d" % n) for n in range(10)) + close(),
            1,
            closed_normally(answers=[(PONG, b"payload-%d" % n) for n in range(10)]),
            id="2.11",
        ),
    ],
)
def test_2_pings_are_answered_and_pongs_ignored(
    data: bytes, chop: int | None, expected: Outcome
) -> None:
    """Each ping gets one pong with its payload (up to 125 bytes); pongs are skipped."""
    check(run(data, chop=chop), expected)


# -- 3: reserved bits ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "chop", "expected"),
    [
        pytest.param(frame(TEXT, b"Hello, world!", rsv=1), None, failed(), id="3.1"),
        pytest.param(
            frame(TEXT, b"small") + frame(TEXT, b"small", rsv=2) + frame(PING, b""),
            None,
            failed("small"),
            id="3.2",
        ),
        pytest.param(
            frame(TEXT, b"small") + frame(TEXT, b"small", rsv=3) + frame(PING, b""),
            1,
            failed("small"),
            id="3.3",
        ),
        pytest.param(
            frame(TEXT, b"small") + frame(TEXT, b"small", rsv=4) + frame(PING, b""),
            1,
            failed("small"),
            id="3.4",
        ),
        pytest.param(frame(BINARY, BIN, rsv=5), None, failed(), id="3.5"),
        pytest.param(frame(PING, b"Hello, world!", rsv=6), None, failed(), id="3.6"),
        pytest.param(frame(CLOSE, code(1000), rsv=7), None, failed(), id="3.7"),
    ],
)
def test_3_reserved_bits_fail_the_connection(
    data: bytes, chop: int | None, expected: Outcome
) -> None:
    """A frame with a reserved bit set fails the connection (1002); nothing after it is read."""
    check(run(data, chop=chop), expected)


# -- 4: opcodes ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        pytest.param(frame(3, b""), failed(), id="4.1.1"),
        pytest.param(frame(4, b"reserved opcode payload"), failed(), id="4.1.2"),
        pytest.param(
            frame(TEXT, b"small") + frame(5, b"") + frame(PING, b""), failed("small"), id="4.1.3"
        ),
        pytest.param(
            frame(TEXT, b"small") + frame(6, b"x") + frame(PING, b""), failed("small"), id="4.1.4"
        ),
        pytest.param(
            frame(TEXT, b"small") + frame(7, b"x") + frame(PING, b""), failed("small"), id="4.1.5"
        ),
        pytest.param(frame(0xB, b""), failed(), id="4.2.1"),
        pytest.param(frame(0xC, b"reserved opcode payload"), failed(), id="4.2.2"),
        pytest.param(
            frame(TEXT, b"small") + frame(0xD, b"") + frame(PING, b""), failed("small"), id="4.2.3"
        ),
        pytest.param(
            frame(TEXT, b"small") + frame(0xE, b"x") + frame(PING, b""), failed("small"), id="4.2.4"
        ),
        pytest.param(
            frame(TEXT, b"small") + frame(0xF, b"x") + frame(PING, b""), failed("small"), id="4.2.5"
        ),
    ],
)
def test_4_reserved_opcodes_fail_at_once(data: bytes, expected: Outcome) -> None:
    """A reserved opcode fails the connection (1002) at once, without answering the ping after it."""
    check(run(data), expected)


# -- 5: fragmentation ---------------------------------------------------------------------

FRAGS = frame(TEXT, b"fragment1", fin=False) + frame(CONT, b"fragment2")
WITH_PING = (
    frame(TEXT, b"fragment1", fin=False) + frame(PING, b"pongme!") + frame(CONT, b"fragment2")
)


@pytest.mark.parametrize(
    ("data", "chop", "expected"),
    [
        pytest.param(
            frame(PING, b"fragment1", fin=False) + frame(CONT, b"fragment2"),
            None,
            failed(),
            id="5.1",
        ),
        pytest.param(
            frame(PONG, b"fragment1", fin=False) + frame(CONT, b"fragment2"),
            None,
            failed(),
            id="5.2",
        ),
        pytest.param(FRAGS + close(), None, closed_normally("fragment1fragment2"), id="5.3"),
        pytest.param(FRAGS + close(), 3, closed_normally("fragment1fragment2"), id="5.4"),
        pytest.param(FRAGS + close(), 1, closed_normally("fragment1fragment2"), id="5.5"),
        pytest.param(
            WITH_PING + close(),
            None,
            closed_normally("fragment1fragment2", answers=[(PONG, b"pongme!")]),
            id="5.6",
        ),
        pytest.param(
            WITH_PING + close(),
            3,
            closed_normally("fragment1fragment2", answers=[(PONG, b"pongme!")]),
            id="5.7",
        ),
        pytest.param(
            WITH_PING + close(),
            1,
            closed_normally("fragment1fragment2", answers=[(PONG, b"pongme!")]),
            id="5.8",
        ),
        pytest.param(frame(CONT, b"non-continuation payload") + FRAGS, None, failed(), id="5.9"),
        pytest.param(frame(CONT, b"non-continuation payload") + FRAGS, 1, failed(), id="5.11"),
        pytest.param(
            frame(CONT, b"non-continuation payload", fin=False) + FRAGS, None, failed(), id="5.12"
        ),
        pytest.param(
            frame(CONT, b"non-continuation payload", fin=False) + FRAGS, 1, failed(), id="5.14"
        ),
        pytest.param(
            FRAGS + frame(CONT, b"fragment3", fin=False) + frame(TEXT, b"fragment4"),
            None,
            failed("fragment1fragment2"),
            id="5.15",
        ),
        pytest.param(
            frame(TEXT, b"fragment1", fin=False) + frame(TEXT, b"fragment2"),
            None,
            failed(),
            id="5.18",
        ),
        pytest.param(
            frame(TEXT, b"fragment1", fin=False)
            + frame(CONT, b"fragment2", fin=False)
            + frame(PING, b"pongme 1!")
            + frame(CONT, b"fragment3", fin=False)
            + frame(PING, b"pongme 2!")
            + frame(CONT, b"fragment4")
            + close(),
            1,
            closed_normally(
                "fragment1fragment2fragment3fragment4",
                answers=[(PONG, b"pongme 1!"), (PONG, b"pongme 2!")],
            ),
            id="5.20",
        ),
    ],
)
def test_5_fragments_are_joined_and_misuse_fails(
    data: bytes, chop: int | None, expected: Outcome
) -> None:
    """Fragments join into one message with pings answered between them; misplaced ones fail (1002)."""
    check(run(data, chop=chop), expected)


def test_5_many_fragments_are_joined_in_linear_time() -> None:
    """A 4 MB message in 4,096 fragments of 1 KiB is joined whole (websocket-client's bytes += is quadratic)."""
    piece = b"0123456789abcdef" * 64
    count = 4096
    data = (
        frame(TEXT, piece, fin=False)
        + b"".join(frame(CONT, piece, fin=False) for _ in range(count - 2))
        + frame(CONT, piece)
        + close()
    )
    outcome = run(data)
    assert outcome.error is None
    assert bytes(outcome.messages[0]) == piece * count  # type: ignore[arg-type]
    assert outcome.answers == [(CLOSE, code(1000))]


# -- 6: UTF-8 -----------------------------------------------------------------------------

VALID = [
    ("6.1.1", b""),
    ("6.2.1", "Hello-µ@ßöäüàá-UTF-8!!".encode()),
    ("6.5.1", "κόσμε".encode()),
    ("6.7.1", b"\x00"), ("6.7.2", b"\xc2\x80"), ("6.7.3", b"\xe0\xa0\x80"), ("6.7.4", b"\xf0\x90\x80\x80"),
    ("6.9.1", b"\x7f"), ("6.9.2", b"\xdf\xbf"), ("6.9.3", b"\xef\xbf\xbf"), ("6.9.4", b"\xf4\x8f\xbf\xbf"),
    ("6.11.1", b"\xed\x9f\xbf"), ("6.11.2", b"\xee\x80\x80"), ("6.11.3", b"\xef\xbf\xbd"),
    ("6.22.1", b"\xef\xbf\xbe"), ("6.22.34", b"\xf4\x8f\xbf\xbe"), ("6.23.1", b"\xef\xbf\xbd"),
]  # fmt: skip
INVALID = [
    ("6.3.1", "κόσμε".encode() + b"\xed\xa0\x80" + b"edited"),
    ("6.8.1", b"\xf8\x88\x80\x80\x80"), ("6.8.2", b"\xfc\x84\x80\x80\x80\x80"),
    ("6.10.1", b"\xf4\x90\x80\x80"), ("6.10.2", b"\xf7\xbf\xbf\xbf"),
    ("6.12.1", b"\x80"), ("6.12.2", b"\xbf"), ("6.12.3", b"\x80\xbf"),
    ("6.13.1", b"\xc0 \xc1 "), ("6.13.2", b"\xe0 \xef "), ("6.14.1", b"\xc0"), ("6.14.3", b"\xe0\x80"),
    ("6.14.10", b"\xdf"), ("6.15.1", b"\xc0\xe0\x80\xf0\x80\x80\xdf\xef\xbf"),
    ("6.16.1", b"\xfe"), ("6.16.2", b"\xff"), ("6.16.3", b"\xfe\xfe\xff\xff"),
    ("6.17.1", b"\xc0\xaf"), ("6.17.2", b"\xe0\x80\xaf"), ("6.18.1", b"\xc1\xbf"), ("6.19.1", b"\xc0\x80"),
    ("6.20.1", b"\xed\xa0\x80"), ("6.20.7", b"\xed\xbf\xbf"),
    ("6.21.1", b"\xed\xa0\x80\xed\xb0\x80"),
    ("truncated", "κόσμε".encode()[:-1]),  # websocket-client's validate_utf8 accepts this
]  # fmt: skip


def fragments(payload: bytes, size: int) -> bytes:
    """``payload`` as a text message in fragments of ``size`` bytes."""
    pieces = [payload[i : i + size] for i in range(0, len(payload), size)] or [b""]
    return b"".join(
        frame(TEXT if n == 0 else CONT, piece, fin=n == len(pieces) - 1)
        for n, piece in enumerate(pieces)
    )


@pytest.mark.parametrize("split", [None, 1], ids=["whole", "1-byte-fragments"])
@pytest.mark.parametrize(("case", "payload"), VALID, ids=[c for c, _ in VALID])
def test_6_valid_utf8_arrives(case: str, payload: bytes, split: int | None) -> None:
    """Valid UTF-8 (noncharacters included) arrives, whole or split inside its characters."""
    data = frame(TEXT, payload) if split is None else fragments(payload, split)
    check(run(data + close()), closed_normally(payload.decode()))


@pytest.mark.parametrize("split", [None, 1], ids=["whole", "1-byte-fragments"])
@pytest.mark.parametrize(("case", "payload"), INVALID, ids=[c for c, _ in INVALID])
def test_6_invalid_utf8_fails_with_1007_and_is_never_returned(
    case: str, payload: bytes, split: int | None
) -> None:
    """Invalid UTF-8 (surrogates, overlongs, truncation) fails the connection with 1007."""
    data = frame(TEXT, payload) if split is None else fragments(payload, split)
    outcome = run(data + frame(PING, b"after") + close())
    check(outcome, failed(with_code=1007))
    assert "not valid UTF-8" in str(outcome.error)


def test_6_a_lone_surrogate_in_a_pong_frame_is_not_decoded() -> None:
    """The frame that once decoded to {"pong": true} (a lone surrogate inside) fails with 1007."""
    outcome = run(frame(TEXT, b'{"pong": true, "x": "\xed\xa0\x80"}'))
    check(outcome, failed(with_code=1007))


def test_6_a_large_invalid_text_message_fails_with_1007() -> None:
    """A text message over 64 KiB (handed on undecoded) is checked too."""
    outcome = run(frame(TEXT, b"a" * 100_000 + b"\xed\xa0\x80"))
    check(outcome, failed(with_code=1007))


# -- 7: close handling --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        pytest.param(
            frame(TEXT, b"Hello World!") + close(), closed_normally("Hello World!"), id="7.1.1"
        ),
        pytest.param(close() + close(), closed_normally(), id="7.1.2"),
        pytest.param(close() + frame(PING, b"Hello World!"), closed_normally(), id="7.1.3"),
        pytest.param(close() + frame(TEXT, b"Hello World!"), closed_normally(), id="7.1.4"),
        pytest.param(
            frame(TEXT, b"fragment1", fin=False) + close() + frame(CONT, b"fragment2"),
            closed_normally(),
            id="7.1.5",
        ),
        pytest.param(
            frame(TEXT, b"x" * 262144) + frame(TEXT, b"Hello World!") + close(),
            closed_normally(b"x" * 262144, "Hello World!"),
            id="7.1.6",
        ),
        pytest.param(frame(CLOSE, b""), Outcome([None], None, [(CLOSE, b"")]), id="7.3.1"),
        pytest.param(frame(CLOSE, b"a"), failed(), id="7.3.2"),
        pytest.param(close(1000), closed_normally(), id="7.3.3"),
        pytest.param(close(1000, b"Hello World!"), closed_normally(), id="7.3.4"),
        pytest.param(close(1000, b"*" * 123), closed_normally(), id="7.3.5"),
        pytest.param(close(1000, b"*" * 124), failed(), id="7.3.6"),
        pytest.param(
            close(1000, b"\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5\xed\xa0\x80edited"),
            failed(with_code=1007),
            id="7.5.1",
        ),
    ],
)
def test_7_close_frames_are_answered_once_and_end_everything(
    data: bytes, expected: Outcome
) -> None:
    """A close frame is answered once with its code; nothing after it is read or answered."""
    outcome = run(data)
    if (
        outcome.messages
        and isinstance(outcome.messages[0], bytearray | bytes)
        and len(outcome.messages[0]) > 1000
    ):
        outcome.messages[0] = bytes(outcome.messages[0])
    check(outcome, expected)


@pytest.mark.parametrize(
    "status", [1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 3000, 3999, 4000, 4999]
)
def test_7_7_valid_close_codes_are_echoed(status: int) -> None:
    """A close frame with a valid code is answered with the same code, and recv() returns None."""
    outcome = run(close(status))
    assert (outcome.messages, outcome.error, outcome.answers) == (
        [None],
        None,
        [(CLOSE, code(status))],
    )


@pytest.mark.parametrize(
    "status", [0, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000, 65535]
)
def test_7_9_invalid_close_codes_fail_with_1002(status: int) -> None:
    """A close frame with a code no endpoint may send fails the connection with 1002."""
    check(run(close(status)), failed())


def test_close_sends_1000_and_returns_when_the_server_answers() -> None:
    """close() sends 1000, returns once the reader sees the server's close, and answers nothing after."""
    server = RawServer()
    try:
        transport = Transport.connect(server.url, timeout=seconds(5))
        done = threading.Event()
        reader = threading.Thread(target=lambda: (transport.recv(), done.set()))
        reader.start()
        returned: list[float] = []
        closer = threading.Thread(
            target=lambda: (transport.close(), returned.append(time.monotonic()))
        )
        closer.start()
        assert server.read_frame() == (CLOSE, code(1000))
        answered = time.monotonic()
        server.send(frame(PING, b"after close") + close(1000))
        closer.join(seconds(5))
        assert returned[0] - answered < CLOSE_WAIT, "close() waited although the server answered"
        reader.join(seconds(5))
        assert done.is_set()
        assert server.frames_until_eof() == []  # no pong, no second close
    finally:
        server.close()


def test_close_waits_briefly_for_a_silent_server() -> None:
    """close() with a reader running gives a server that never answers CLOSE_WAIT, then shuts the socket."""
    server = RawServer()
    try:
        transport = Transport.connect(server.url, timeout=seconds(5))
        errors: list[BaseException] = []
        reader = threading.Thread(target=lambda: _read_into(transport, errors))
        reader.start()
        closed = threading.Event()
        closer = threading.Thread(target=lambda: (transport.close(timeout=0.3), closed.set()))
        closer.start()
        assert server.read_frame() == (CLOSE, code(1000))
        # A lower bound on a real wait (not scaled: close()'s own 0.3 s is fixed).
        assert not closed.wait(0.15), "close() did not wait for the server's close frame"
        assert closed.wait(seconds(5))
        reader.join(seconds(5))
        assert server.frames_until_eof() == []
        assert isinstance(errors[0], ConnectionFailedError)
    finally:
        server.close()


def _read_into(transport: Transport, errors: list[BaseException]) -> None:
    try:
        transport.recv()
    except BaseException as exc:
        errors.append(exc)


def test_nothing_is_sent_after_the_close_handshake() -> None:
    """Once the server's close frame is answered, send() fails and writes nothing."""
    server = RawServer()
    try:
        transport = Transport.connect(server.url, timeout=seconds(5))
        transport.settimeout(seconds(5))
        server.send(close(1001))
        assert transport.recv() is None
        with pytest.raises(ConnectionFailedError, match="closed"):
            transport.send('{"ping":true}')
        transport.abort()
        assert server.frames_until_eof() == [(CLOSE, code(1001))]
    finally:
        server.close()
