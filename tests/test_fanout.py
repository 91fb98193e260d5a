"""Many tasks from one thread: thread-free submit, Batch, map, usage, and the storm guard."""

from __future__ import annotations

import io
import json
import threading
from collections.abc import Iterator
from concurrent.futures import CancelledError
from decimal import Decimal
from typing import Any

import pytest

import diffusionmaster
from diffusionmaster.testing import Emulator

from .conftest import API_KEY, make_client, seconds


def _tasks(emu: Emulator) -> list[dict[str, Any]]:
    return [f["newTask"] for f in emu.received_frames() if "newTask" in f]


def _threads() -> set[str]:
    return {t.name for t in threading.enumerate() if t.name.startswith("diffusionmaster-")}


def test_submit_keeps_hundreds_in_flight_without_worker_threads(
    client: diffusionmaster.Client, emulator: Emulator
) -> None:
    """300 submitted tasks are all on the wire at once, and no worker thread is made."""
    emulator.withhold_frames()
    futures = [client.submit(client.text2img, f"p{n}", seed=n + 1) for n in range(300)]
    assert emulator.wait_for(lambda: len(_tasks(emulator)) == 300, seconds(10))
    assert client._executor is None
    assert not any(name.startswith("diffusionmaster-worker") for name in _threads())
    emulator.release_frames()
    results = [f.result(seconds(20)) for f in futures]
    by_task = {t["taskUUID"]: t["promptText"] for t in _tasks(emulator)}
    assert [by_task[images[0].task_uuid] for images in results] == [f"p{n}" for n in range(300)]
    assert client._supervisor.in_flight == 0


def test_submit_of_bad_arguments_fails_the_future_and_sends_nothing(
    client: diffusionmaster.Client, emulator: Emulator
) -> None:
    """A bad argument fails its Future with InvalidArgumentError; nothing is sent."""
    future = client.submit(client.text2img, "x", number_results=0)
    with pytest.raises(diffusionmaster.InvalidArgumentError, match="number_results"):
        future.result(seconds(5))
    assert _tasks(emulator) == []


def _png() -> bytes:
    from PIL import Image as PILImage

    out = io.BytesIO()
    PILImage.new("RGB", (64, 64), "teal").save(out, "PNG")
    return out.getvalue()


def test_submit_chains_uploads_without_a_thread(
    client: diffusionmaster.Client, emulator: Emulator
) -> None:
    """A local input is uploaded, then the task sent, all from the reader's completions."""
    future = client.submit(client.img2img, "night", _png())
    (image,) = future.result(seconds(10))
    (task,) = _tasks(emulator)
    uploads = [f["newImageUpload"] for f in emulator.received_frames() if "newImageUpload" in f]
    assert len(uploads) == 1 and task["imageInitiatorUUID"] and image.task_uuid == task["taskUUID"]
    assert client._executor is None


def test_batch_keeps_at_most_max_in_flight(
    client: diffusionmaster.Client, emulator: Emulator
) -> None:
    """With max_in_flight=3 only three tasks reach the server until one finishes."""
    emulator.withhold_frames()
    batch = client.batch(max_in_flight=3)
    futures = [batch.submit(client.text2img, f"b{n}") for n in range(10)]
    assert emulator.wait_for(lambda: len(_tasks(emulator)) == 3, seconds(5))
    assert not emulator.wait_for(lambda: len(_tasks(emulator)) > 3, seconds(0.3))
    assert batch.in_flight == 3 and len(batch) == 10
    emulator.release_frames()
    results = batch.results(seconds(20))
    assert len(_tasks(emulator)) == 10
    assert [len(r) for r in results] == [1] * 10
    assert [f.done() for f in futures] == [True] * 10


def test_batch_collects_errors_per_task(client: diffusionmaster.Client, emulator: Emulator) -> None:
    """A bad task and a server-failed task do not stop the others."""
    batch = client.batch(max_in_flight=2)
    batch.submit(client.text2img, "fine")
    batch.submit(client.text2img, "bad", steps=0)
    emulator.fail_next_task(error_id=42, message="nope")
    batch.submit(client.text2img, "fails")
    batch.submit(client.text2img, "fine too")
    results = batch.results(seconds(20), return_exceptions=True)
    assert isinstance(results[1], diffusionmaster.InvalidArgumentError)
    errors = [r for r in results if isinstance(r, diffusionmaster.TaskError)]
    assert len(errors) == 1 and errors[0].error_id == 42
    assert sum(isinstance(r, list) for r in results) == 2
    with pytest.raises(diffusionmaster.DiffusionMasterError):
        batch.results(seconds(5))


def test_batch_cancel_stops_what_was_not_sent(
    client: diffusionmaster.Client, emulator: Emulator
) -> None:
    """cancel() cancels the queued tasks; those in flight still finish."""
    emulator.withhold_frames()
    batch = client.batch(max_in_flight=2)
    futures = [batch.submit(client.text2img, f"c{n}") for n in range(8)]
    assert emulator.wait_for(lambda: len(_tasks(emulator)) == 2, seconds(5))
    assert batch.cancel() == 6
    emulator.release_frames()
    assert [len(f.result(seconds(10))) for f in futures[:2]] == [1, 1]
    for future in futures[2:]:
        with pytest.raises(CancelledError):
            future.result(0)
    assert len(_tasks(emulator)) == 2


def test_batch_as_completed_yields_in_completion_order(
    client: diffusionmaster.Client, emulator: Emulator
) -> None:
    """as_completed yields every future once, each done."""
    batch = client.batch(max_in_flight=4)
    for n in range(12):
        batch.submit(client.text2img, f"a{n}")
    done = list(batch.as_completed(seconds(20)))
    assert len(done) == 12 and len(set(map(id, done))) == 12
    assert all(f.done() and f.exception() is None for f in done)


def test_batch_refuses_other_callables(client: diffusionmaster.Client) -> None:
    """Only task methods of the client can be batched."""
    batch = client.batch()
    with pytest.raises(diffusionmaster.InvalidArgumentError, match="method"):
        batch.submit(print, "x")
    with pytest.raises(diffusionmaster.InvalidArgumentError, match="max_in_flight"):
        client.batch(max_in_flight=0)


def test_close_cancels_unsent_and_fails_in_flight(emulator: Emulator) -> None:
    """Closing the client cancels queued batch tasks and fails the ones in flight."""
    client = make_client(emulator)
    emulator.withhold_frames()
    batch = client.batch(max_in_flight=1)
    first = batch.submit(client.text2img, "in flight")
    rest = [batch.submit(client.text2img, f"queued {n}") for n in range(3)]
    assert emulator.wait_for(lambda: len(_tasks(emulator)) == 1, seconds(5))
    client.close()
    with pytest.raises(diffusionmaster.ClientClosedError):
        first.result(seconds(5))
    assert all(f.cancelled() for f in rest)
    assert len(_tasks(emulator)) == 1


def test_map_yields_in_order_and_cancels_on_early_stop(
    client: diffusionmaster.Client, emulator: Emulator
) -> None:
    """map yields in input order; stopping early cancels what was not sent."""
    prompts = [f"m{n}" for n in range(6)]
    results = list(client.map(client.text2img, prompts, max_in_flight=3, seed=9))
    by_task = {t["taskUUID"]: t for t in _tasks(emulator)}
    assert [by_task[r[0].task_uuid]["promptText"] for r in results] == prompts
    assert {t["seed"] for t in by_task.values()} == {9}
    emulator.clear_received()
    emulator.latency = seconds(0.3)
    iterator = client.map(client.text2img, [f"x{n}" for n in range(10)], max_in_flight=2)
    next(iterator)  # the first two are done, the next two just sent
    iterator.close()  # type: ignore[attr-defined]
    assert not emulator.wait_for(lambda: len(_tasks(emulator)) > 4, seconds(1))


def test_map_return_exceptions(client: diffusionmaster.Client) -> None:
    """With return_exceptions a bad call yields its exception in place."""
    out = list(client.map(client.upscale, [b"not an image"], return_exceptions=True))
    assert isinstance(out[0], diffusionmaster.InvalidArgumentError)


def test_usage_counts_tasks_images_and_exact_cost(client: diffusionmaster.Client) -> None:
    """Usage sums the server's costs exactly (as decimals), per client and per batch."""
    first = client.text2img("one", number_results=3)
    batch = client.batch()
    good = batch.submit(client.text2img, "two", number_results=2)
    batch.submit(client.text2img, "bad", steps=0)
    batch.results(seconds(10), return_exceptions=True)
    second = good.result(0)
    assert all(image.cost is not None for image in first + second)

    def total(images: list[diffusionmaster.Image]) -> Decimal:
        return sum((Decimal(repr(i.cost)) for i in images), Decimal(0))

    assert client.usage == diffusionmaster.Usage(
        tasks=2, failed=0, images=5, cost=total(first + second)
    )
    assert batch.usage == diffusionmaster.Usage(tasks=1, failed=0, images=2, cost=total(second))
    assert isinstance(client.usage.cost, Decimal)


# -- the reconnect storm ----------------------------------------------------------------


class _ResettingServer:
    """Accepts and authenticates every connection, then ends it at once (a broken server)."""

    def __init__(self) -> None:
        from websockets.sync.server import ServerConnection, serve

        self.connections = 0

        def handler(ws: ServerConnection) -> None:
            self.connections += 1
            ws.recv(timeout=5)
            ws.send(json.dumps({"newConnectionSessionUUID": {"connectionSessionUUID": "s-1"}}))
            # returning ends the connection

        self._server = serve(handler, "127.0.0.1", 0)
        self.port = self._server.socket.getsockname()[1]
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="test-resetting", daemon=True
        )
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._thread.join(5)


@pytest.fixture
def resetting() -> Iterator[_ResettingServer]:
    server = _ResettingServer()
    yield server
    server.close()


def test_a_server_that_resets_every_connection_meets_a_growing_delay(
    resetting: _ResettingServer,
) -> None:
    """Connections that never prove healthy do not reset the backoff: a few attempts a second."""
    policy = diffusionmaster.Reconnect(
        resume_window=seconds(30), min_delay=0.05, max_delay=0.4, jitter=0.0
    )
    client = diffusionmaster.Client(
        API_KEY, url=f"ws://127.0.0.1:{resetting.port}/", reconnect=policy,
        connect_timeout=seconds(2),
    )  # fmt: skip
    try:
        window = 1.5
        threading.Event().wait(window)  # measure the attempt rate over a fixed window
        attempts = resetting.connections
    finally:
        client.close()
    # 0, 0.05, 0.1, 0.2, 0.4, 0.4 ... s between attempts: about 7 in 1.5 s. Resetting
    # the backoff on every authenticated connection made hundreds.
    assert 3 <= attempts <= 12, attempts
