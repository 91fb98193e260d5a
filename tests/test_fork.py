"""A client created before ``os.fork()``, used in the child (gunicorn --preload, Celery).

Each test forks the pytest process for real. The child reports through a pipe as
one JSON object and leaves with ``os._exit``, never returning into pytest; the
parent reads the report with a deadline.
"""

from __future__ import annotations

import json
import os
import select
import signal
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import diffusionmaster
from diffusionmaster import _http
from diffusionmaster.testing import Emulator

from .conftest import API_KEY, make_client, seconds

pytestmark = [
    pytest.mark.skipif(not hasattr(os, "fork"), reason="fork() is POSIX only"),
    # Python 3.12+ warns that forking a process with threads may deadlock the child:
    # the point of these tests is that this library's own locks do not.
    pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning"),
]


@pytest.fixture
def emu() -> Iterator[Emulator]:
    """An emulator whose image files are served over keep-alive HTTP."""
    with Emulator(api_keys=[API_KEY], keep_alive_images=True) as emulator:
        yield emulator


def _fork(work: Callable[[], dict[str, Any]]) -> tuple[int, int]:
    """Run ``work()`` in a forked child; return its pid and the pipe its report comes on."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report through the pipe, never return into pytest
        try:
            os.close(read_end)
            try:
                report = work()
            except BaseException as exc:
                report = {"crash": repr(exc)}
            os.write(write_end, json.dumps(report).encode())
        finally:
            os._exit(0)
    os.close(write_end)
    return pid, read_end


def _report(pid: int, fd: int, timeout: float) -> dict[str, Any]:
    """The child's report, read until its exit closes the pipe; a late child is killed."""
    chunks: list[bytes] = []
    end = time.monotonic() + timeout
    try:
        while True:
            ready, _, _ = select.select([fd], [], [], max(0.0, end - time.monotonic()))
            if not ready:
                os.kill(pid, signal.SIGKILL)
                return {"crash": "no report from the child in time"}
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        os.close(fd)
        os.waitpid(pid, 0)  # the pipe is closed: the child has exited (or was killed)
    report: dict[str, Any] = json.loads(b"".join(chunks) or b'{"crash": "empty report"}')
    return report


def _in_child(work: Callable[[], dict[str, Any]], timeout: float) -> dict[str, Any]:
    """Run ``work()`` in a forked child and return its report."""
    return _report(*_fork(work), timeout)


def _library_threads() -> list[str]:
    return sorted(t.name for t in threading.enumerate() if t.name.startswith("diffusionmaster-"))


# -- several threads make the child's first call at once ---------------------------------------


def _first_calls_at_once(client: diffusionmaster.Client, threads: int) -> dict[str, Any]:
    """In the child: ``threads`` threads call at the same moment; then close the client."""
    barrier = threading.Barrier(threads, timeout=seconds(10))
    results: list[str] = []
    errors: list[str] = []
    lock = threading.Lock()

    def call(n: int) -> None:
        try:
            barrier.wait()
            (text,) = client.enhance_prompt(f"a fox number {n}")
            with lock:
                results.append(text)
        except BaseException as exc:
            with lock:
                errors.append(repr(exc))

    workers = [threading.Thread(target=call, args=(n,)) for n in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(seconds(30))
    session = client.session_uuid
    client.close()
    for thread in threading.enumerate():
        if thread.name.startswith("diffusionmaster-"):
            thread.join(seconds(3))
    return {
        "results": len(results),
        "errors": errors,
        "session": session,
        "threads_after_close": _library_threads(),
        "workers_alive": sum(w.is_alive() for w in workers),
    }


def test_threads_making_the_first_call_in_a_child_set_the_client_up_once(emu: Emulator) -> None:
    """Eight threads calling at once in a forked child all succeed over one new connection,
    and no reader outlives close()."""
    with make_client(emu) as client:
        parent_session = client.session_uuid
        opened = emu.connections_opened
        report = _in_child(lambda: _first_calls_at_once(client, 8), seconds(60))
        assert report == {
            "results": 8,
            "errors": [],
            "session": report.get("session"),
            "threads_after_close": [],
            "workers_alive": 0,
        }
        assert report["session"] not in (None, parent_session)
        assert emu.connections_opened == opened + 1
        # The parent's session and connection are untouched.
        assert client.session_uuid == parent_session
        assert len(client.enhance_prompt("from the parent")) == 1
        assert emu.connections_opened == opened + 1


def test_closing_an_unused_client_in_a_child_leaves_the_parent_connected(emu: Emulator) -> None:
    """A child that only closes the inherited client does not cut the parent's connection."""
    with make_client(emu) as client:
        parent_session = client.session_uuid
        opened = emu.connections_opened

        def close_only() -> dict[str, Any]:
            client.close()
            return {"state": client.state.value, "threads": _library_threads()}

        assert _in_child(close_only, seconds(30)) == {"state": "closed", "threads": []}
        assert len(client.enhance_prompt("still here")) == 1
        assert (client.session_uuid, emu.connections_opened) == (parent_session, opened)
        assert emu.connection_count == 1


# -- downloads over kept-alive connections, in parent and child at once ------------------------


def _fetch_all(
    downloader: _http.Downloader, urls: list[str], expected: dict[str, bytes], threads: int
) -> dict[str, Any]:
    """Download every URL ``threads`` times over (concurrently); count right and wrong bodies."""
    right = wrong = 0
    errors: list[str] = []
    lock = threading.Lock()

    def worker(offset: int) -> None:
        nonlocal right, wrong
        for n in range(len(urls)):
            url = urls[(n + offset) % len(urls)]
            try:
                body, _ = downloader.fetch(url, timeout=seconds(10))
            except Exception as exc:
                with lock:
                    errors.append(repr(exc))
                continue
            with lock:
                if body == expected[url]:
                    right += 1
                else:
                    wrong += 1

    workers = [threading.Thread(target=worker, args=(n,)) for n in range(threads)]
    for thread in workers:
        thread.start()
    for thread in workers:
        thread.join(seconds(60))
    return {"right": right, "wrong": wrong, "errors": errors}


def _plain_get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=seconds(10)) as response:
        body: bytes = response.read()
        return body


def test_parent_and_child_each_download_their_own_bytes(emu: Emulator) -> None:
    """After a download leaves a kept-alive connection in the pool, parent and child download
    concurrently after fork() and each gets exactly its own images, five rounds over."""
    with make_client(emu) as client:
        mine = [image.url or "" for image in client.text2img("the parent's", number_results=4)]
        theirs = [image.url or "" for image in client.text2img("the child's", number_results=4)]
        expected = {url: _plain_get(url) for url in mine + theirs}
        assert len(set(expected.values())) == 8  # eight different files
        downloader = client._downloads
        for _ in range(5):
            # Leaves a kept-alive connection (to the image port) in the pool at fork time.
            assert downloader.fetch(mine[0], timeout=seconds(10))[0] == expected[mine[0]]
            pid, fd = _fork(lambda: _fetch_all(downloader, theirs, expected, 4))
            parent = _fetch_all(downloader, mine, expected, 4)  # while the child downloads
            child = _report(pid, fd, seconds(60))
            assert child == {"right": 16, "wrong": 0, "errors": []}
            assert parent == {"right": 16, "wrong": 0, "errors": []}
