"""examples/django_app under a real ``gunicorn --preload -w 4``, against the emulator.

The site's shared client is created and used (a generation and a download) in the
gunicorn master, before it forks its workers: each worker inherits the client, its
WebSocket and a kept-alive image connection (the emulator serves images over
keep-alive HTTP). Concurrent requests must each get the image of their own prompt.
"""

from __future__ import annotations

import concurrent.futures
import http.client
import os
import socket
import subprocess
import sys
import threading
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from diffusionmaster.testing import Emulator

from .conftest import API_KEY, seconds

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(sys.platform == "win32", reason="gunicorn is POSIX only"),
]

PROJECT = Path(__file__).resolve().parent.parent / "examples" / "django_app"
WORKERS = 4
REQUESTS = 40
CONCURRENCY = 8

#: The WSGI module gunicorn preloads: the example's application, whose shared client
#: then generates and downloads one image in the master, before the fork.
PRELOADED = '''\
"""The example site, its shared client used once before gunicorn forks."""
from imagesite.diffusion import get_client
from imagesite.wsgi import application

(_image,) = get_client().text2img("in the master, before fork")
_image.read()
'''


def _gunicorn_available() -> bool:
    try:
        import gunicorn  # noqa: F401
    except ImportError:
        if os.environ.get("CI") == "true":
            pytest.fail("gunicorn is missing: it is in the test extra (pip install -e '.[test]')")
        return False
    return True


class _Gunicorn:
    """A gunicorn process on a listening socket made here (no free-port race)."""

    def __init__(self, args: list[str], env: dict[str, str], cwd: Path) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0), backlog=128)
        self.port: int = self.listener.getsockname()[1]
        fd = self.listener.fileno()
        self.booted = threading.Event()
        self.log: list[str] = []
        self.process = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "--bind", f"fd://{fd}", *args],
            env=env,
            cwd=cwd,
            pass_fds=(fd,),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.reader = threading.Thread(target=self._read_log, name="gunicorn-log", daemon=True)
        self.reader.start()

    def _read_log(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.log.append(line.rstrip("\n"))
            if sum("Booting worker" in entry for entry in self.log) >= WORKERS:
                self.booted.set()

    def wait_until_serving(self, timeout: float) -> None:
        """Wait for every worker to boot, then for an accepted TCP connection."""
        if not self.booted.wait(timeout):
            raise AssertionError("gunicorn did not boot its workers:\n" + "\n".join(self.log))
        # Readiness of the socket itself: a connection is accepted (by the kernel's
        # backlog, then a worker), within the deadline.
        with socket.create_connection(("127.0.0.1", self.port), timeout=timeout):
            pass

    def stop(self) -> None:
        self.process.terminate()  # gunicorn's graceful shutdown
        try:
            self.process.wait(seconds(15))
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(seconds(5))
        self.reader.join(seconds(5))
        self.listener.close()


@pytest.fixture
def emu() -> Iterator[Emulator]:
    """An emulator serving images over keep-alive HTTP, as image hosts do."""
    with Emulator(api_keys=[API_KEY], keep_alive_images=True) as emulator:
        yield emulator


@pytest.fixture(params=["sync", "gthread"])
def gunicorn(request: pytest.FixtureRequest, emu: Emulator, tmp_path: Path) -> Iterator[_Gunicorn]:
    """``gunicorn --preload -w 4`` of the example site (sync workers, or 4 threads each)."""
    if not _gunicorn_available():
        pytest.skip("gunicorn is not installed (pip install -e '.[test]')")
    (tmp_path / "preloaded_site.py").write_text(PRELOADED)
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(PROJECT), str(tmp_path)]),
        "DJANGO_SETTINGS_MODULE": "imagesite.settings",
        "DIFFUSIONMASTER_URL": emu.url,
        "DIFFUSIONMASTER_API_KEY": API_KEY,
    }
    threads = ["--threads", "4"] if request.param == "gthread" else []
    args = [
        "--preload", "--workers", str(WORKERS), "--worker-class", request.param, *threads,
        "--timeout", str(int(seconds(60))), "--graceful-timeout", str(int(seconds(5))),
        "--log-level", "info", "--error-logfile", "-",
        "preloaded_site:application",
    ]  # fmt: skip
    server = _Gunicorn(args, env, tmp_path)
    try:
        server.wait_until_serving(seconds(60))
        yield server
    finally:
        server.stop()


def _generate(port: int, prompt: str) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=seconds(30))
    try:
        conn.request("GET", "/generate?" + urllib.parse.urlencode({"prompt": prompt}))
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        conn.close()


def _image_bytes(emu: Emulator, image_uuid: str) -> bytes:
    """The emulator's file for ``image_uuid``, over a connection of its own."""
    url = f"{emu.http_url}/image/{image_uuid}.jpg"
    with urllib.request.urlopen(url, timeout=seconds(10)) as response:
        body: bytes = response.read()
        return body


def test_every_response_carries_its_own_image(gunicorn: _Gunicorn, emu: Emulator) -> None:
    """40 concurrent requests to 4 preloaded workers each get exactly the image of their
    own prompt, and each process opens one connection."""
    prompts = [f"request {n}" for n in range(REQUESTS)]
    with concurrent.futures.ThreadPoolExecutor(CONCURRENCY) as pool:
        responses = list(pool.map(lambda p: _generate(gunicorn.port, p), prompts))
    prompt_of = {
        frame["newTask"]["taskUUID"]: frame["newTask"]["promptText"]
        for frame in emu.received_frames()
        if "newTask" in frame
    }
    statuses = [status for status, _, _ in responses]
    assert statuses == [200] * REQUESTS, "\n".join(gunicorn.log[-30:])
    for prompt, (_, headers, body) in zip(prompts, responses, strict=True):
        assert prompt_of[headers["X-Task-UUID"]] == prompt
        assert body == _image_bytes(emu, headers["X-Image-UUID"])
    assert len({headers["X-Image-UUID"] for _, headers, _ in responses}) == REQUESTS
    # The master's connection, then at most one per worker process.
    assert emu.connections_opened <= 1 + WORKERS
