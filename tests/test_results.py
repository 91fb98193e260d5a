"""Results: reading (once, over reused HTTP connections), saving, Pillow, and inline display."""

from __future__ import annotations

import base64
import copy
import http.server
import io
import json
import pickle
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image as PILImage

import diffusionmaster
from diffusionmaster import (
    ConnectionFailedError,
    Image,
    InvalidArgumentError,
    RequestTimeoutError,
    UploadedImage,
    _http,
)
from diffusionmaster.testing import Emulator

from .conftest import make_client, seconds

UUID = "0b6f3a2e-8d7c-4e5f-9a1b-2c3d4e5f6a7b"


def _encode(fmt: str, size: tuple[int, int] = (20, 10), mode: str = "RGB") -> bytes:
    buffer = io.BytesIO()
    PILImage.new(mode, size, (10, 200, 30) if mode == "RGB" else (10, 200, 30, 128)).save(
        buffer, fmt
    )
    return buffer.getvalue()


def _inline(data: bytes) -> Image:
    """An Image whose bytes came with the result (returnBase64Image), with no URL."""
    encoded = base64.b64encode(data).decode()
    return Image._from_result(uuid=UUID, url=None, task_uuid=None, base64_data=encoded)


# -- a keep-alive HTTP server, to watch downloads -------------------------------------------


class _ImageServer(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.files: dict[str, bytes] = {}
        self.requests: list[str] = []
        self.connections = 0
        self.lock = threading.Lock()
        self.answer = threading.Event()  # cleared: requests wait (a slow server)
        self.answer.set()

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that timed out and closed its socket is expected here


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive
    timeout = 5  # an idle kept-alive connection ends on its own
    server: _ImageServer

    def setup(self) -> None:
        super().setup()
        with self.server.lock:
            self.server.connections += 1

    def do_GET(self) -> None:
        with self.server.lock:
            self.server.requests.append(self.path)
        self.server.answer.wait(seconds(5))
        body = self.server.files.get(self.path)
        if body is None:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Type", "image/png")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def image_server() -> Iterator[_ImageServer]:
    """A keep-alive HTTP server on 127.0.0.1 that counts connections and requests."""
    server = _ImageServer()
    thread = threading.Thread(target=server.serve_forever, args=(0.01,), name="test-image-server")
    thread.start()
    try:
        yield server
    finally:
        server.answer.set()
        _http.default().close()
        server.shutdown()
        server.server_close()
        thread.join(seconds(5))


# -- read ------------------------------------------------------------------------------------


def test_read_downloads_once(image_server: _ImageServer) -> None:
    """Two reads of an image make one HTTP request and return the same bytes."""
    image_server.files["/a.png"] = data = _encode("PNG")
    image = Image(UUID, url=image_server.base + "/a.png")
    assert image.read() == data
    assert image.read() is image.read()
    assert image_server.requests == ["/a.png"]


def test_concurrent_reads_download_once(image_server: _ImageServer) -> None:
    """Eight threads reading one image at once make one HTTP request."""
    image_server.files["/a.png"] = data = _encode("PNG")
    image = Image(UUID, url=image_server.base + "/a.png")
    results: list[bytes] = []
    threads = [threading.Thread(target=lambda: results.append(image.read())) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(seconds(5))
    assert results == [data] * 8
    assert image_server.requests == ["/a.png"]


def test_downloads_reuse_the_http_connection(image_server: _ImageServer) -> None:
    """Downloads of several images from one host go over one kept-alive connection."""
    for name in ("a", "b", "c"):
        image_server.files[f"/{name}.png"] = _encode("PNG", (5, 5 + len(name)))
    images = [Image(UUID, url=f"{image_server.base}/{name}.png") for name in ("a", "b", "c")]
    assert [i.to_pil().size for i in images] == [(5, 6)] * 3
    assert image_server.requests == ["/a.png", "/b.png", "/c.png"]
    assert image_server.connections == 1


def test_download_timeout_is_a_request_timeout(image_server: _ImageServer) -> None:
    """A download that gets no answer in time raises RequestTimeoutError (a TimeoutError)."""
    image_server.files["/slow.png"] = _encode("PNG")
    image_server.answer.clear()
    with pytest.raises(RequestTimeoutError, match=r"download of .*/slow\.png timed out") as info:
        Image(UUID, url=image_server.base + "/slow.png").read(timeout=seconds(0.2))
    assert isinstance(info.value, TimeoutError)


def test_missing_image_is_a_download_error(emulator: Emulator) -> None:
    """An HTTP error status raises DownloadError carrying it, not ConnectionFailedError."""
    url = f"{emulator.http_url}/image/{UUID}.jpg"
    with pytest.raises(diffusionmaster.DownloadError, match="HTTP error 404") as info:
        Image(UUID, url=url).read()
    assert (info.value.status, info.value.url) == (404, url)
    assert not isinstance(info.value, ConnectionFailedError)


def test_base64_result_matches_the_file(client: diffusionmaster.Client) -> None:
    """return_base64 bytes are the same as the file at the image's URL."""
    (image,) = client.text2img("inline", return_base64=True)
    assert image.read() == Image(image.uuid, image.url).read()
    assert "imageBase64" not in repr(image) and "base64" not in repr(image)


def test_image_without_data_or_url_cannot_be_read() -> None:
    """An Image built by hand with no URL raises ValueError on read."""
    with pytest.raises(ValueError, match="neither base64 data nor a URL"):
        Image(UUID).read()


# -- save ------------------------------------------------------------------------------------


def test_save_into_a_directory_names_the_file_after_the_uuid(tmp_path: Path) -> None:
    """Saving into a directory writes <uuid>.<format suffix>."""
    data = _encode("JPEG")
    assert _inline(data).save(tmp_path) == tmp_path / f"{UUID}.jpg"
    assert (tmp_path / f"{UUID}.jpg").read_bytes() == data


def test_save_adds_the_suffix_of_the_format(tmp_path: Path) -> None:
    """A file name without a suffix gets the image's own suffix."""
    data = _encode("WEBP")
    assert _inline(data).save(tmp_path / "picture") == tmp_path / "picture.webp"
    assert (tmp_path / "picture.webp").read_bytes() == data


def test_save_with_the_same_format_writes_the_bytes(tmp_path: Path) -> None:
    """A suffix naming the image's format gets the bytes unchanged."""
    data = _encode("JPEG")
    assert _inline(data).save(tmp_path / "x.JPEG") == tmp_path / "x.JPEG"
    assert (tmp_path / "x.JPEG").read_bytes() == data


@pytest.mark.parametrize(
    ("source", "mode", "name", "expected"),
    [("JPEG", "RGB", "x.png", "PNG"), ("PNG", "RGBA", "x.jpg", "JPEG"),
     ("PNG", "RGB", "x.webp", "WEBP")],
)  # fmt: skip
def test_save_converts_to_the_format_of_the_suffix(
    tmp_path: Path, source: str, mode: str, name: str, expected: str
) -> None:
    """A .png, .jpg or .webp name of another format is converted to it."""
    path = _inline(_encode(source, mode=mode)).save(tmp_path / name)
    with PILImage.open(path) as saved:
        assert (saved.format, saved.size) == (expected, (20, 10))


def test_save_with_an_unknown_suffix_writes_the_bytes(tmp_path: Path) -> None:
    """Another suffix gets the bytes as they are."""
    data = _encode("PNG")
    assert _inline(data).save(tmp_path / "x.bin").read_bytes() == data


# -- Pillow ----------------------------------------------------------------------------------


def test_to_pil_returns_a_loaded_image(client: diffusionmaster.Client) -> None:
    """to_pil returns the decoded image at the generated size."""
    (image,) = client.text2img("a box", size=(640, 960))
    picture = image.to_pil()
    assert (picture.format, picture.mode, picture.size) == ("JPEG", "RGB", (640, 960))


def test_to_pil_without_pillow_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without Pillow, to_pil raises ImportError with the pip command."""
    image = _inline(_encode("PNG"))
    monkeypatch.setitem(sys.modules, "PIL", None)
    with pytest.raises(ImportError, match=r"pip install 'diffusionmaster\[pil\]'"):
        image.to_pil()


def test_save_conversion_without_pillow_says_how_to_install_it(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Without Pillow, a save that needs a conversion raises ImportError and writes nothing."""
    image = _inline(_encode("PNG"))
    monkeypatch.setitem(sys.modules, "PIL", None)
    with pytest.raises(ImportError, match="pip install Pillow"):
        image.save(tmp_path / "x.jpg")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_importing_the_package_does_not_import_pillow() -> None:
    """Pillow is imported only when a method needs it."""
    code = "import sys, diffusionmaster; print('PIL' in sys.modules)"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=seconds(30)
    )
    assert (result.returncode, result.stdout) == (0, "False\n")


# -- inline display --------------------------------------------------------------------------


def test_jpeg_mimebundle(client: diffusionmaster.Client) -> None:
    """A JPEG result displays as image/jpeg with its repr as text."""
    (image,) = client.text2img("a kite")
    bundle = image._repr_mimebundle_()
    assert bundle == {
        "text/plain": repr(image),
        "image/jpeg": base64.b64encode(image.read()).decode("ascii"),
    }


def test_jpeg_repr_methods(client: diffusionmaster.Client) -> None:
    """A JPEG result gives its bytes to _repr_jpeg_ only."""
    (image,) = client.text2img("a kite")
    assert image._repr_jpeg_() == image.read()
    assert (image._repr_png_(), image._repr_html_()) == (None, None)


def test_png_repr_methods(client: diffusionmaster.Client) -> None:
    """A PNG result (background removal) gives its bytes to _repr_png_ only."""
    cutout = client.remove_background(_encode("PNG"))
    assert cutout._repr_png_() == cutout.read()
    assert (cutout._repr_jpeg_(), cutout._repr_html_()) == (None, None)
    assert set(cutout._repr_mimebundle_()) == {"text/plain", "image/png"}


def test_webp_displays_as_html() -> None:
    """A WEBP image displays as an HTML <img> with a data URI."""
    data = _encode("WEBP")
    html = f'<img src="data:image/webp;base64,{base64.b64encode(data).decode()}"/>'
    image = _inline(data)
    assert image._repr_html_() == html
    assert image._repr_mimebundle_() == {"text/plain": repr(image), "text/html": html}
    assert (image._repr_png_(), image._repr_jpeg_()) == (None, None)


def test_ipython_displays_a_result_inline(client: diffusionmaster.Client) -> None:
    """IPython's display formatter renders a result as an inline JPEG."""
    from IPython.core.formatters import DisplayFormatter

    (image,) = client.text2img("a kite")
    data, _ = DisplayFormatter().format(image)
    assert set(data) == {"text/plain", "image/jpeg"}
    assert base64.b64decode(data["image/jpeg"]) == image.read()


# -- download pools (fork safety: tests/test_fork.py) ---------------------------------------


def test_each_client_owns_its_download_pool(emulator: Emulator) -> None:
    """Results download through their client's pool, which close() empties."""
    with make_client(emulator) as client:
        (image,) = client.text2img("x")
        assert image._content.downloader is client._downloads
        image.read()
    assert client._downloads._pool == {} or all(
        not conns for conns in client._downloads._pool.values()
    )


# -- downloads the server cannot abuse ---------------------------------------------------------


class _HostileHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    stop = threading.Event()

    def do_GET(self) -> None:
        if self.path == "/redirect":
            self.send_response(302)
            self.send_header("Location", "/elsewhere")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("Content-Type", "image/png")
        if self.path == "/huge":
            self.send_header("Content-Length", str(10**12))
        self.end_headers()
        # /trickle: one byte every 50 ms, much longer than the client's deadline.
        # /endless: no length, 1 MB pieces for ever (until the client goes away).
        piece = b"x" if self.path == "/trickle" else b"x" * 1_000_000
        try:
            while not self.stop.wait(0.05 if self.path == "/trickle" else 0):
                self.wfile.write(piece)
                self.wfile.flush()
        except OSError:
            pass

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def hostile() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _HostileHandler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, args=(0.01,), name="test-hostile")
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        _HostileHandler.stop.set()
        server.shutdown()
        server.server_close()
        thread.join(seconds(5))
        _HostileHandler.stop.clear()


def test_a_trickling_download_is_cut_at_its_total_deadline(hostile: str) -> None:
    """The timeout bounds the whole download, not each read."""
    downloader = _http.Downloader()
    start = time.monotonic()
    with pytest.raises(diffusionmaster.RequestTimeoutError):
        downloader.fetch(f"{hostile}/trickle", timeout=seconds(0.5))
    assert time.monotonic() - start < seconds(2)


def test_an_endless_body_is_cut_at_the_size_cap(
    hostile: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A body without end stops at the cap with DownloadError; memory stays bounded."""
    monkeypatch.setattr(_http, "MAX_BODY", 5_000_000)
    with pytest.raises(diffusionmaster.DownloadError, match="over the 5000000 byte cap"):
        _http.Downloader().fetch(f"{hostile}/endless", timeout=seconds(10))


def test_a_declared_huge_body_is_refused_before_reading(hostile: str) -> None:
    """A Content-Length over the cap is refused at once."""
    with pytest.raises(diffusionmaster.DownloadError, match="refused"):
        _http.Downloader().fetch(f"{hostile}/huge", timeout=seconds(5))


def test_a_redirect_is_a_download_error(hostile: str) -> None:
    """A redirect is not followed: DownloadError with the status."""
    with pytest.raises(diffusionmaster.DownloadError, match="a redirect 302") as info:
        _http.Downloader().fetch(f"{hostile}/redirect", timeout=seconds(5))
    assert info.value.status == 302


# -- results that travel: pickle, deepcopy, the dict form --------------------------------------


def _round_trip(image: Image) -> Image:
    copy_ = pickle.loads(pickle.dumps(image))
    assert isinstance(copy_, Image)
    return copy_


def test_pickle_keeps_the_fields_and_the_base64_bytes() -> None:
    """A pickled base64 result unpickles equal, with its bytes and no downloader."""
    data = _encode("PNG")
    image = Image._from_result(
        uuid=UUID, url=None, task_uuid="t-1", nsfw=False, cost=0.0013, alt_text="a kite",
        base64_data=base64.b64encode(data).decode(), downloader=_http.Downloader(),
    )  # fmt: skip
    again = _round_trip(image)
    assert (again, repr(again)) == (image, repr(image))
    assert again._content.downloader is None
    assert again.read() == data


def test_pickling_never_downloads(image_server: _ImageServer) -> None:
    """Pickling an image that has not been read sends no HTTP request."""
    image_server.files["/a.png"] = _encode("PNG")
    image = Image(UUID, url=image_server.base + "/a.png")
    pickle.dumps(image)
    assert image_server.requests == []


def test_pickle_keeps_bytes_already_read(image_server: _ImageServer) -> None:
    """An image read before pickling is not downloaded again by its unpickled copy."""
    image_server.files["/a.png"] = data = _encode("PNG")
    image = Image(UUID, url=image_server.base + "/a.png")
    image.read()
    del image_server.files["/a.png"]
    assert _round_trip(image).read() == data
    assert image_server.requests == ["/a.png"]


def test_pickling_does_not_wait_for_a_read_in_progress() -> None:
    """Pickling an image whose bytes another thread is fetching (its lock held) returns
    at once, without bytes."""
    image = Image(UUID, url="http://127.0.0.1:1/never.png")
    payloads: list[bytes] = []
    with image._content._lock:  # what a read in progress holds
        thread = threading.Thread(target=lambda: payloads.append(pickle.dumps(image)), daemon=True)
        thread.start()
        thread.join(seconds(5))
        assert not thread.is_alive()
    assert pickle.loads(payloads[0])._content.cached is False


def test_unpickled_result_downloads_after_its_client_closed(emulator: Emulator) -> None:
    """An unread result pickled, then unpickled after its client closed, reads its bytes."""
    with make_client(emulator) as client:
        (image,) = client.text2img("a kite", seed=3)
        payload = pickle.dumps(image)
        data = image.read()
    again = pickle.loads(payload)
    assert again.read() == data
    assert again._content.downloader is None


@pytest.mark.slow
def test_unpickled_result_reads_its_bytes_in_another_process(emulator: Emulator) -> None:
    """A result pickled here is unpickled by a fresh interpreter that downloads its bytes."""
    with make_client(emulator) as client:
        (image,) = client.text2img("a kite", seed=4)
        payload = pickle.dumps(image)
        data = image.read()
    code = (
        "import pickle, sys\n"
        "image = pickle.loads(sys.stdin.buffer.read())\n"
        "sys.stdout.buffer.write(image.read(timeout=30))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], input=payload, capture_output=True, timeout=seconds(30)
    )
    assert (result.returncode, result.stderr) == (0, b"")
    assert result.stdout == data


def test_deepcopy_keeps_bytes_and_the_clients_pool(client: diffusionmaster.Client) -> None:
    """A deep copy in the same process equals the image, shares its bytes and its pool."""
    (image,) = client.text2img("a kite")
    data = image.read()
    again = copy.deepcopy(image)
    assert again == image and again is not image
    assert again._content is not image._content
    assert again._content.downloader is client._downloads
    assert again.read() is data


def test_deepcopy_of_an_unread_image_reads_on_its_own(client: diffusionmaster.Client) -> None:
    """A deep copy of an unread image downloads its own bytes; the original stays unread."""
    (image,) = client.text2img("a kite")
    again = copy.deepcopy(image)
    data = again.read()
    assert image._content.cached is False
    assert image.read() == data


def test_uploaded_image_pickles_deepcopies_and_round_trips_as_a_dict() -> None:
    """An UploadedImage survives pickle, deepcopy and JSON through to_dict/from_dict."""
    uploaded = UploadedImage(UUID, url="http://127.0.0.1:1/image/x.png", task_uuid="t-2")
    assert pickle.loads(pickle.dumps(uploaded)) == uploaded
    assert copy.deepcopy(uploaded) == uploaded
    as_dict = uploaded.to_dict()
    assert as_dict == {"uuid": UUID, "url": "http://127.0.0.1:1/image/x.png", "task_uuid": "t-2"}
    assert UploadedImage.from_dict(json.loads(json.dumps(as_dict))) == uploaded


def test_uploaded_image_from_a_dict_is_usable_as_an_input(
    emulator: Emulator, client: diffusionmaster.Client
) -> None:
    """An UploadedImage rebuilt from its dict is sent by reference to another call."""
    uploaded = client.upload_image(_encode("PNG", (64, 64)))
    again = UploadedImage.from_dict(json.loads(json.dumps(uploaded.to_dict())))
    emulator.clear_received()
    client.img2img("the same, at night", again)
    (frame,) = [f["newTask"] for f in emulator.received_frames() if "newTask" in f]
    assert frame["imageInitiatorUUID"] == uploaded.uuid


def test_dict_of_a_base64_result_carries_its_bytes(client: diffusionmaster.Client) -> None:
    """A result sent with return_base64 keeps its bytes through JSON, with no download."""
    (image,) = client.text2img("a kite", return_base64=True)
    payload = json.dumps(image.to_dict())
    again = Image.from_dict(json.loads(payload))
    assert json.loads(payload)["base64"] == base64.b64encode(image.read()).decode("ascii")
    assert again == image
    assert again._content.cached is True
    assert again.read() == image.read()


def test_dict_of_a_url_result_has_no_bytes_and_downloads_them(
    client: diffusionmaster.Client,
) -> None:
    """A result without base64 has ``base64: None`` in its dict, even once read, and its
    rebuilt copy downloads the bytes from the URL."""
    (image,) = client.text2img("a kite", seed=5)
    data = image.read()
    as_dict = image.to_dict()
    assert as_dict == {
        "uuid": image.uuid, "url": image.url, "task_uuid": image.task_uuid, "nsfw": image.nsfw,
        "cost": image.cost, "alt_text": image.alt_text, "base64": None,
    }  # fmt: skip
    again = Image.from_dict(json.loads(json.dumps(as_dict)))
    assert again._content.cached is False
    assert again.read() == data


def test_dict_with_include_data_true_downloads_and_embeds(client: diffusionmaster.Client) -> None:
    """``to_dict(include_data=True)`` embeds the downloaded bytes as base64."""
    (image,) = client.text2img("a kite")
    encoded = image.to_dict(include_data=True)["base64"]
    assert base64.b64decode(encoded) == image.read()


def test_dict_with_include_data_false_omits_base64_bytes() -> None:
    """``to_dict(include_data=False)`` leaves even the result's base64 bytes out."""
    assert _inline(_encode("PNG")).to_dict(include_data=False)["base64"] is None


def test_dict_of_a_decoded_base64_result_still_carries_its_bytes() -> None:
    """A base64 result already read (decoded) still puts its bytes in its dict."""
    data = _encode("PNG")
    image = _inline(data)
    image.read()
    assert base64.b64decode(image.to_dict()["base64"]) == data


@pytest.mark.parametrize(
    ("data", "parameter", "message"),
    [
        ([], "data", "must be a dict, got list"),
        ({}, "data['uuid']", "must be a non-empty string, got None"),
        ({"uuid": ""}, "data['uuid']", "must be a non-empty string, got ''"),
        ({"uuid": UUID, "url": 3}, "data['url']", "must be str or None, got int"),
        ({"uuid": UUID, "nsfw": "no"}, "data['nsfw']", "must be bool or None, got str"),
        ({"uuid": UUID, "cost": "1"}, "data['cost']", "must be int or float or None, got str"),
        ({"uuid": UUID, "cost": True}, "data['cost']", "must be a number or None, got bool"),
        ({"uuid": UUID, "base64": "@@"}, "data['base64']", "not valid base64"),
    ],
)
def test_from_dict_refuses_bad_values(data: Any, parameter: str, message: str) -> None:
    """Image.from_dict names the key whose value is wrong."""
    with pytest.raises(InvalidArgumentError) as info:
        Image.from_dict(data)
    assert info.value.parameter == parameter
    assert message in str(info.value)


def test_from_dict_ignores_unknown_keys() -> None:
    """Keys Image.from_dict does not know are ignored (dicts of a newer version load)."""
    image = Image.from_dict({"uuid": UUID, "cost": 1, "future": [1, 2]})
    assert (image.uuid, image.cost, image.url) == (UUID, 1.0, None)


# -- errors travel too ---------------------------------------------------------------------------

_ERRORS = [
    diffusionmaster.InvalidArgumentError("timeout", "must be positive"),
    diffusionmaster.AuthenticationError("Invalid API key", error_id=19),
    diffusionmaster.ConnectionFailedError("refused"),
    diffusionmaster.SessionExpiredError("lost", task_uuids=["t-1", "t-2"]),
    diffusionmaster.ClientClosedError("closed"),
    diffusionmaster.RequestTimeoutError("late", task_uuid="t-3"),
    diffusionmaster.DownloadError("HTTP error 404", url="http://127.0.0.1:1/x", status=404),
    diffusionmaster.ProtocolError("bad frame"),
    diffusionmaster.TaskError("boom", task_uuid="t-4", error_id=500),
    diffusionmaster.ReentrancyError("from a callback"),
]


@pytest.mark.parametrize("error", _ERRORS, ids=lambda e: type(e).__name__)
def test_every_error_pickles_with_its_message_and_attributes(error: Exception) -> None:
    """An exception of the tree unpickles as its own type, message and attributes."""
    again = pickle.loads(pickle.dumps(error))
    assert (type(again), str(again), again.args) == (type(error), str(error), error.args)
    assert again.__dict__ == error.__dict__


def _fail_in_child(task_uuid: str) -> None:
    raise diffusionmaster.TaskError("boom", task_uuid=task_uuid, error_id=500)


@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")
def test_a_task_error_raised_in_a_pool_process_reaches_the_parent() -> None:
    """A TaskError raised in a multiprocessing pool child is raised in the parent, fields kept
    (it used to kill the pool's result thread, and the call timed out)."""
    import multiprocessing

    with multiprocessing.get_context("fork").Pool(1) as pool:
        pending = pool.apply_async(_fail_in_child, ("t-5",))
        with pytest.raises(diffusionmaster.TaskError) as info:
            pending.get(timeout=seconds(20))
    assert (info.value.task_uuid, info.value.error_id, info.value.message) == ("t-5", 500, "boom")
