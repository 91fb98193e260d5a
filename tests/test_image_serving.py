"""The emulator's image files over keep-alive HTTP (``Emulator(keep_alive_images=True)``)."""

from __future__ import annotations

import socket
import urllib.request
from collections.abc import Iterator

import pytest

import diffusionmaster
from diffusionmaster.testing import Emulator

from .conftest import API_KEY, make_client, seconds


@pytest.fixture
def emu() -> Iterator[Emulator]:
    """An emulator serving images over keep-alive HTTP on a port of their own."""
    with Emulator(api_keys=[API_KEY], keep_alive_images=True) as emulator:
        yield emulator


def _fetch(url: str) -> bytes:
    """The body of ``url``, over a connection of its own."""
    with urllib.request.urlopen(url, timeout=seconds(5)) as response:
        body: bytes = response.read()
        return body


def _exchange(sock: socket.socket, request: bytes) -> tuple[str, dict[str, str], bytes]:
    """Send one request on ``sock``; read one response (status line, headers, body)."""
    sock.sendall(request)
    stream = sock.makefile("rb")
    status = stream.readline().decode("latin-1").rstrip("\r\n")
    headers: dict[str, str] = {}
    while (line := stream.readline()) not in (b"\r\n", b""):
        name, _, value = line.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    body = stream.read(int(headers["content-length"]))
    stream.close()  # the socket stays open (makefile keeps its own reference)
    return status, headers, body


def _image_port(emu: Emulator) -> int:
    return int(emu.http_url.rsplit(":", 1)[1])


def _get(path: str, extra: str = "") -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{extra}\r\n".encode()


def _images(emu: Emulator, count: int) -> list[diffusionmaster.Image]:
    with make_client(emu) as client:
        return client.text2img("a lighthouse", number_results=count)


def test_image_urls_name_the_image_port(emu: Emulator) -> None:
    """Image URLs use the image port, which is not the WebSocket port."""
    (image,) = _images(emu, 1)
    port = _image_port(emu)
    assert port != emu.port
    assert image.url == f"http://127.0.0.1:{port}/image/{image.uuid}.jpg"
    assert emu.url == f"ws://127.0.0.1:{emu.port}/v1/"


def test_many_gets_share_one_connection(emu: Emulator) -> None:
    """Three GETs on one TCP connection are each answered with their own file."""
    images = _images(emu, 3)
    expected = [_fetch(image.url or "") for image in images]
    opened = emu.image_connections_opened
    with socket.create_connection(("127.0.0.1", _image_port(emu))) as sock:
        sock.settimeout(seconds(5))
        for image, body in zip(images, expected, strict=True):
            status, headers, got = _exchange(sock, _get(f"/image/{image.uuid}.jpg"))
            assert (status, headers["connection"], headers["content-type"]) == (
                "HTTP/1.1 200 OK", "keep-alive", "image/jpeg",
            )  # fmt: skip
            assert got == body
    assert emu.image_connections_opened == opened + 1


def test_connection_close_is_honoured(emu: Emulator) -> None:
    """A request with Connection: close is answered, then the server closes the connection."""
    (image,) = _images(emu, 1)
    with socket.create_connection(("127.0.0.1", _image_port(emu))) as sock:
        sock.settimeout(seconds(5))
        request = _get(f"/image/{image.uuid}.jpg", "Connection: close\r\n")
        status, headers, _ = _exchange(sock, request)
        assert (status, headers["connection"]) == ("HTTP/1.1 200 OK", "close")
        assert sock.recv(1) == b""


def test_unknown_image_is_404_and_keeps_the_connection(emu: Emulator) -> None:
    """A GET of an unknown path is 404, and the next GET on that connection is answered."""
    (image,) = _images(emu, 1)
    with socket.create_connection(("127.0.0.1", _image_port(emu))) as sock:
        sock.settimeout(seconds(5))
        status, headers, body = _exchange(sock, _get("/image/nope.jpg"))
        assert (status, headers["connection"], body) == (
            "HTTP/1.1 404 Not Found", "keep-alive", b"Not Found\n",
        )  # fmt: skip
        status, _, body = _exchange(sock, _get(f"/image/{image.uuid}.jpg"))
        assert status == "HTTP/1.1 200 OK"
        assert body == _fetch(image.url or "")


def test_other_methods_get_405(emu: Emulator) -> None:
    """A POST is refused with 405 and the connection is closed."""
    with socket.create_connection(("127.0.0.1", _image_port(emu))) as sock:
        sock.settimeout(seconds(5))
        status, headers, _ = _exchange(sock, b"POST /image/x.jpg HTTP/1.1\r\nHost: h\r\n\r\n")
        assert (status, headers["connection"], headers["allow"]) == (
            "HTTP/1.1 405 Method Not Allowed", "close", "GET",
        )  # fmt: skip


def test_client_downloads_reuse_one_connection(emu: Emulator) -> None:
    """A client reading 6 results one after another opens one image connection."""
    with make_client(emu) as client:
        images = client.text2img("a harbour", number_results=6)
        bodies = [image.read() for image in images]
    assert [len(body) > 0 for body in bodies] == [True] * 6
    assert (emu.image_connections_opened, emu.image_requests) == (1, 6)


def test_images_survive_a_restart_on_the_same_port(emu: Emulator) -> None:
    """After restart() the image port is the same and the images are still served."""
    (image,) = _images(emu, 1)
    before, body = emu.http_url, _fetch(image.url or "")
    emu.restart()
    assert emu.http_url == before
    assert _fetch(image.url or "") == body


def test_default_emulator_closes_after_each_image() -> None:
    """Without keep_alive_images, images come from the WebSocket port with Connection: close."""
    with Emulator(api_keys=[API_KEY]) as emulator:
        (image,) = _images(emulator, 1)
        assert emulator.http_url == f"http://127.0.0.1:{emulator.port}"
        with urllib.request.urlopen(image.url or "", timeout=seconds(5)) as response:
            assert response.headers["Connection"] == "close"
        assert (emulator.image_connections_opened, emulator.keep_alive_images) == (0, False)


def test_a_request_cut_mid_headers_gets_no_answer(emu: Emulator) -> None:
    """A client that ends its side in the middle of the headers is closed without an answer."""
    with socket.create_connection(("127.0.0.1", _image_port(emu))) as sock:
        sock.settimeout(seconds(5))
        sock.sendall(b"GET /image/x.jpg HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        sock.shutdown(socket.SHUT_WR)
        assert sock.recv(1024) == b""
