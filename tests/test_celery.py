"""examples/celery_app on a real Redis broker with a real prefork Celery worker.

The test starts ``redis-server`` (no persistence, in a temporary folder, on a free
port of 127.0.0.1), the emulator, and ``celery worker --pool=prefork`` with three
processes; it sends tasks as a producer would and checks that every result is the
image the emulator made for that very task. In CI (``CI=true``) a missing
redis-server or Celery fails the test; elsewhere it is skipped with the reason.
"""

from __future__ import annotations

import contextlib
import http.client
import importlib.util
import io
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from diffusionmaster import Image, _http
from diffusionmaster.testing import Emulator
from diffusionmaster.testing.images import render_generated

from .conftest import API_KEY, seconds

pytestmark = pytest.mark.slow

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
CONCURRENCY = 3
TASKS = 36
SIZE = (512, 512)


def _missing(what: str) -> None:
    """Fail in CI, skip elsewhere: a service the test needs is not installed."""
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{what} (CI must install it: see .ci/run)")
    pytest.skip(what)


class _Output:
    """Drains a process's merged stdout/stderr in a thread; tells when a line appears."""

    def __init__(self, process: subprocess.Popen[str], name: str) -> None:
        self.lines: list[str] = []
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._done = False
        self._process = process
        self._thread = threading.Thread(target=self._drain, name=f"test-{name}-output")
        self._thread.start()

    def _drain(self) -> None:
        assert self._process.stdout is not None
        for line in self._process.stdout:
            with self._changed:
                self.lines.append(line.rstrip("\n"))
                self._changed.notify_all()
        with self._changed:
            self._done = True
            self._changed.notify_all()

    def wait_for_line(self, found: Callable[[str], bool], timeout: float) -> bool:
        """Wait until a line satisfies ``found``; False at the timeout or at end of output."""
        with self._changed:
            self._changed.wait_for(lambda: self._done or any(map(found, self.lines)), timeout)
            return any(map(found, self.lines))

    def text(self) -> str:
        with self._lock:
            return "\n".join(self.lines)

    def join(self) -> None:
        self._thread.join(seconds(10))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _stop(process: subprocess.Popen[str], output: _Output, *, group: bool) -> None:
    """Stop a process (its whole process group when ``group``), SIGKILL if it lingers."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(seconds(30))
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(seconds(10))
    if group:
        # Pool processes left behind (their parent died first) are killed with the group.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
    output.join()


def _live_group_members(pgid: int) -> list[int]:
    """The processes of group ``pgid`` that are still running (zombies excluded)."""
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue  # the process ended meanwhile
        fields = text[text.rindex(")") + 2 :].split()
        if int(fields[2]) == pgid and fields[0] != "Z":
            members.append(int(stat.parent.name))
    return members


@pytest.fixture
def redis_url(tmp_path: Path) -> Iterator[str]:
    """A real redis-server on a free port of 127.0.0.1, no persistence, stopped after."""
    server = shutil.which("redis-server")
    if server is None:
        _missing("redis-server is not installed (Debian: apt-get install redis-server)")
    if importlib.util.find_spec("redis") is None:
        _missing("the redis Python package is not installed (pip install -e '.[test]')")
    for _attempt in range(3):  # another process may take the free port first
        port = _free_port()
        process = subprocess.Popen(
            [server, "--bind", "127.0.0.1", "--port", str(port), "--save", "",
             "--appendonly", "no", "--dir", str(tmp_path), "--logfile", ""],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
        output = _Output(process, "redis")
        if output.wait_for_line(lambda line: "Ready to accept connections" in line, seconds(10)):
            break
        _stop(process, output, group=False)
    else:
        pytest.fail(f"redis-server did not start:\n{output.text()}")
    try:
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        _stop(process, output, group=False)


@pytest.fixture
def celery_emulator() -> Iterator[Emulator]:
    """An emulator with a little latency per image, so that tasks overlap."""
    with Emulator(api_keys=[API_KEY], latency=seconds(0.05)) as emulator:
        yield emulator


class _Worker:
    def __init__(self, process: subprocess.Popen[str], output: _Output) -> None:
        self.process = process
        self.output = output


@pytest.fixture
def worker(
    request: pytest.FixtureRequest, redis_url: str, celery_emulator: Emulator
) -> Iterator[_Worker]:
    """``celery -A celery_app worker --pool=prefork`` (or the pool given as the fixture's
    parameter) on the broker and the emulator."""
    pool = getattr(request, "param", "prefork")
    if importlib.util.find_spec("celery") is None:
        _missing("Celery is not installed (pip install -e '.[test]')")
    env = {
        **os.environ,
        "CELERY_BROKER_URL": redis_url,
        "CELERY_RESULT_BACKEND": redis_url,
        "DIFFUSIONMASTER_URL": celery_emulator.url,
        "DIFFUSIONMASTER_API_KEY": API_KEY,
        "PYTHONPATH": os.pathsep.join([str(EXAMPLES), os.environ.get("PYTHONPATH", "")]),
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "celery_app", "worker",
         f"--pool={pool}", f"--concurrency={CONCURRENCY}", "--loglevel=INFO",
         "--without-gossip", "--without-mingle", "--without-heartbeat",
         f"--hostname=test-{uuid.uuid4().hex[:8]}@localhost"],
        cwd=EXAMPLES, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True,  # its own process group: teardown kills the pool with it
    )  # fmt: skip
    output = _Output(process, "celery")
    worker = _Worker(process, output)
    try:
        if not output.wait_for_line(lambda line: " ready." in line, seconds(60)):
            pytest.fail(f"the Celery worker did not start:\n{output.text()}")
        yield worker
    finally:
        _stop(process, output, group=True)
        assert _live_group_members(process.pid) == [], output.text()


def _expected_jpeg(prompt: str, seed: int) -> bytes:
    """The file the emulator makes for ``prompt`` and ``seed`` (deterministic)."""
    buffer = io.BytesIO()
    render_generated(prompt, seed, SIZE).convert("RGB").save(buffer, "JPEG", quality=85)
    return buffer.getvalue()


def _send(redis_url: str, jobs: list[tuple[str, int, bool]]) -> list[list[dict[str, Any]]]:
    """Send ``(prompt, seed, include_data)`` tasks as a producer does; return their results."""
    from celery import Celery

    producer = Celery("producer", broker=redis_url, backend=redis_url)
    try:
        pending = [
            producer.send_task(
                "celery_app.text2img",
                args=[prompt],
                kwargs={"seed": seed, "include_data": include_data, "size": list(SIZE)},
            )
            for prompt, seed, include_data in jobs
        ]
        return [result.get(timeout=seconds(90)) for result in pending]
    finally:
        producer.close()


def test_prefork_workers_return_each_task_its_own_image(
    redis_url: str, celery_emulator: Emulator, worker: _Worker
) -> None:
    """Three dozen tasks through Redis and three prefork processes each get their own image,
    from one client (one session) per process."""
    jobs = [(f"prompt {n}: a lighthouse, take {n}", 1000 + n, n % 2 == 0) for n in range(TASKS)]
    results = _send(redis_url, jobs)
    tasks = [f["newTask"] for f in celery_emulator.received_frames() if "newTask" in f]
    frames = {task["taskUUID"]: task for task in tasks}
    try:
        for (prompt, seed, include_data), items in zip(jobs, results, strict=True):
            (item,) = items
            image = Image.from_dict(item)
            assert (item["base64"] is not None) is include_data
            assert image.read(timeout=seconds(10)) == _expected_jpeg(prompt, seed), prompt
            sent = frames[item["task_uuid"]]
            assert (sent["promptText"], sent["seed"]) == (prompt, seed)
            assert item["alt_text"] == prompt
    finally:
        _http.default().close()
    assert len({items[0]["uuid"] for items in results}) == TASKS
    sessions = celery_emulator.session_uuids()
    assert 2 <= len(sessions) <= CONCURRENCY, sessions
    assert celery_emulator.connections_opened == len(sessions)


def _warm_shutdown(worker: _Worker) -> list[str]:
    """Stop the worker as ``celery worker`` stops on SIGTERM; return its "client closed" lines."""
    worker.process.send_signal(signal.SIGTERM)
    assert worker.process.wait(seconds(30)) == 0
    return [line for line in worker.output.text().splitlines() if "client closed" in line]


def test_a_warm_shutdown_closes_the_client_of_each_pool_process(
    redis_url: str, celery_emulator: Emulator, worker: _Worker
) -> None:
    """On SIGTERM every prefork process that made a client closes it (worker_process_shutdown)."""
    _send(redis_url, [(f"a kite, take {n}", 3000 + n, False) for n in range(12)])
    sessions = celery_emulator.session_uuids()
    closed = _warm_shutdown(worker)
    assert len(closed) == len(sessions) >= 1, worker.output.text()
    assert celery_emulator.wait_for(lambda: celery_emulator.connection_count == 0, seconds(10))


def test_the_example_producer_saves_the_images_of_its_prompts(
    redis_url: str, celery_emulator: Emulator, worker: _Worker, tmp_path: Path
) -> None:
    """``python -m celery_app PROMPT...`` saves, for each prompt, the image made for it."""
    env = {
        **os.environ,
        "CELERY_BROKER_URL": redis_url,
        "CELERY_RESULT_BACKEND": redis_url,
        "PYTHONPATH": os.pathsep.join([str(EXAMPLES), os.environ.get("PYTHONPATH", "")]),
    }
    prompts = ["a lighthouse at dawn", "a kite over the sea"]
    result = subprocess.run(
        [sys.executable, "-m", "celery_app", *prompts],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=seconds(120),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    tasks = [f["newTask"] for f in celery_emulator.received_frames() if "newTask" in f]
    assert sorted(task["promptText"] for task in tasks) == sorted(prompts)
    lines = result.stdout.splitlines()
    assert len(lines) == len(prompts)
    for prompt, line in zip(prompts, lines, strict=True):
        shown, path = line.split(": ", 1)
        assert shown == repr(prompt)
        saved = tmp_path / path
        assert saved.parent == tmp_path / "celery-images" and saved.suffix == ".jpg"
        connection = http.client.HTTPConnection(
            "127.0.0.1", celery_emulator.port, timeout=seconds(10)
        )
        try:
            connection.request("GET", f"/image/{saved.name}")
            assert saved.read_bytes() == connection.getresponse().read()
        finally:
            connection.close()


def test_a_task_the_server_fails_fails_at_the_producer_with_its_error(
    redis_url: str, celery_emulator: Emulator, worker: _Worker
) -> None:
    """A task the server fails raises at the producer, through JSON, an error naming
    TaskError with its task UUID, error id and message."""
    celery_emulator.fail_next_task(500, "injected failure")
    with pytest.raises(Exception, match=r"TaskError.*errorId 500\): injected failure") as info:
        _send(redis_url, [("a lighthouse", 1, False)])
    (task,) = [f["newTask"] for f in celery_emulator.received_frames() if "newTask" in f]
    assert f"task {task['taskUUID']} failed" in str(info.value)


@pytest.mark.parametrize("worker", ["threads"], indirect=True)
def test_a_threads_pool_shares_one_client_and_closes_it(
    redis_url: str, celery_emulator: Emulator, worker: _Worker
) -> None:
    """With the threads pool every task uses the worker's one client, closed when it stops."""
    jobs = [(f"a kite, take {n}", 2000 + n, False) for n in range(9)]
    results = _send(redis_url, jobs)
    assert len({items[0]["uuid"] for items in results}) == len(jobs)
    assert len(celery_emulator.session_uuids()) == 1
    assert len(_warm_shutdown(worker)) == 1, worker.output.text()
    assert celery_emulator.wait_for(lambda: celery_emulator.connection_count == 0, seconds(10))
