"""examples/django_app, run by Django (its test client, and the threaded WSGI server of
``runserver``) against the emulator."""

from __future__ import annotations

import http.client
import os
import sys
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from diffusionmaster import State
from diffusionmaster.testing import Emulator

from .conftest import API_KEY, seconds

pytestmark = pytest.mark.slow

django = pytest.importorskip("django")

PROJECT = Path(__file__).resolve().parent.parent / "examples" / "django_app"


@pytest.fixture(scope="module")
def django_project() -> Iterator[Any]:
    """Django set up with the example's settings; returns its shared-client module."""
    from django.test.utils import setup_test_environment, teardown_test_environment

    sys.path.insert(0, str(PROJECT))
    previous = os.environ.get("DJANGO_SETTINGS_MODULE")
    os.environ["DJANGO_SETTINGS_MODULE"] = "imagesite.settings"
    try:
        django.setup()  # once per process: Django stays configured after this module
        setup_test_environment()  # allows the test client's "testserver" host
        from imagesite import diffusion

        yield diffusion
    finally:
        teardown_test_environment()
        sys.path.remove(str(PROJECT))
        if previous is None:
            del os.environ["DJANGO_SETTINGS_MODULE"]
        else:
            os.environ["DJANGO_SETTINGS_MODULE"] = previous


@pytest.fixture
def site(django_project: Any, emulator: Emulator) -> Iterator[Any]:
    """The example site pointed at the emulator; its shared client is closed afterwards."""
    from django.test import override_settings

    with override_settings(DIFFUSIONMASTER_URL=emulator.url, DIFFUSIONMASTER_API_KEY=API_KEY):
        try:
            yield django_project
        finally:
            django_project.close_client()


@pytest.fixture
def server_url(site: Any) -> Iterator[str]:
    """The site behind Django's threaded WSGI server (the one of runserver), on a free port."""
    from django.core.servers.basehttp import ThreadedWSGIServer, WSGIRequestHandler
    from django.core.wsgi import get_wsgi_application

    server = ThreadedWSGIServer(("127.0.0.1", 0), WSGIRequestHandler, allow_reuse_address=False)
    server.set_app(get_wsgi_application())
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), name="wsgi-server")
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(seconds(5))


def _get(url: str) -> tuple[int, dict[str, str], bytes]:
    with urllib.request.urlopen(url, timeout=seconds(20)) as response:
        return response.status, dict(response.headers), response.read()


def _emulator_image(emu: Emulator, image_uuid: str) -> bytes:
    connection = http.client.HTTPConnection("127.0.0.1", emu.port, timeout=seconds(10))
    try:
        connection.request("GET", f"/image/{image_uuid}.jpg")
        return connection.getresponse().read()
    finally:
        connection.close()


def test_concurrent_requests_each_get_their_own_image(server_url: str, emulator: Emulator) -> None:
    """Eight requests in flight at once through the WSGI server share one connection to
    the service, and each response holds the image of its own prompt."""
    emulator.withhold_frames()  # keep every request waiting until all eight are in
    responses: dict[int, tuple[int, dict[str, str], bytes]] = {}
    errors: list[BaseException] = []

    def request(n: int) -> None:
        try:
            responses[n] = _get(f"{server_url}/generate?prompt=prompt+number+{n}")
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=request, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    all_in = emulator.wait_for(
        lambda: sum(1 for f in emulator.received_frames() if "newTask" in f) == 8, seconds(10)
    )
    emulator.release_frames()
    for thread in threads:
        thread.join(seconds(20))
    assert all_in
    assert errors == []
    prompts = {
        f["newTask"]["taskUUID"]: f["newTask"]["promptText"]
        for f in emulator.received_frames()
        if "newTask" in f
    }
    for n, (status, headers, body) in responses.items():
        assert (status, headers["Content-Type"]) == (200, "image/jpeg")
        assert prompts[headers["X-Task-UUID"]] == f"prompt number {n}"
        assert body == _emulator_image(emulator, headers["X-Image-UUID"])
    assert len({body for _, _, body in responses.values()}) == 8
    assert emulator.connections_opened == 1


def test_bad_prompt_is_a_400(site: Any, emulator: Emulator) -> None:
    """An empty prompt gets a 400 with the client's message, and no task is sent."""
    from django.test import Client as TestClient

    response = TestClient().get("/generate", {"prompt": ""})
    assert (response.status_code, response["Content-Type"]) == (400, "text/plain")
    assert response.content.decode().startswith("prompt: ")
    assert [f for f in emulator.received_frames() if "newTask" in f] == []


def test_task_error_is_a_502(site: Any, emulator: Emulator) -> None:
    """A task the service fails gets a 502."""
    from django.test import Client as TestClient

    emulator.fail_next_task(500, "no GPU left")
    response = TestClient().get("/generate", {"prompt": "a fox"})
    assert (response.status_code, response.content) == (502, b"image generation failed\n")


def test_close_client_closes_the_shared_client(site: Any) -> None:
    """close_client closes the shared client, and the next get_client opens a new one."""
    first = site.get_client()
    assert site.get_client() is first
    site.close_client()
    assert first.state is State.CLOSED
    second = site.get_client()
    assert second is not first
    assert second.state is State.CONNECTED
