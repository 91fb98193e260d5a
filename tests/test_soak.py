"""Soak: many threads share one client while the emulator drops every connection at
random short intervals. Nothing may be lost, duplicated or hung, and no thread leaks."""

from __future__ import annotations

import random
import threading
import time

import pytest

import diffusionmaster
from diffusionmaster import Reconnect
from diffusionmaster.testing import Emulator

from .conftest import API_KEY, make_client, seconds

pytestmark = pytest.mark.slow

THREADS = 48
TASKS_PER_THREAD = 21  # at least 1,008 tasks in all
MIN_DROPS = 40  # workers go on past their share until this many drops happened


def test_soak_with_random_drops() -> None:
    """1,008 tasks from 48 threads through random drops: zero lost, duplicated or hung."""
    rng = random.Random(1234)
    # Tasks written into a socket the server then aborts never reach it; re-sending them
    # (same taskUUID, house rule 6) is what makes "zero hung" possible under drops.
    reconnect = Reconnect(
        resume_window=seconds(10), min_delay=0.005, max_delay=0.05, resend_unanswered=True
    )
    results: dict[tuple[int, int], list[diffusionmaster.Image]] = {}
    failures: list[BaseException] = []
    stop = threading.Event()
    drops = 0

    with Emulator(
        api_keys=[API_KEY], resume_window=seconds(10), images_per_frame=2, latency=0.003
    ) as emu:
        client = make_client(emu, reconnect=reconnect, timeout=seconds(30))

        def dropper() -> None:
            nonlocal drops
            while not stop.wait(rng.uniform(0.01, 0.04)):
                emu.drop_connections()
                drops += 1

        def worker(n: int) -> None:
            k = 0
            while k < TASKS_PER_THREAD or (drops < MIN_DROPS and time.monotonic() < budget):
                try:
                    results[n, k] = client.text2img(f"soak {n}/{k}", number_results=1 + (n + k) % 3)
                except BaseException as exc:
                    failures.append(exc)
                k += 1

        started = time.monotonic()
        budget = started + seconds(30)
        chaos = threading.Thread(target=dropper, name="soak-dropper")
        chaos.start()
        workers = [threading.Thread(target=worker, args=(n,)) for n in range(THREADS)]
        for t in workers:
            t.start()
        for t in workers:
            t.join(seconds(60))
        stop.set()
        chaos.join()
        elapsed = time.monotonic() - started
        hung = [t for t in workers if t.is_alive()]
        prompts = {f["newTask"]["taskUUID"]: f["newTask"]["promptText"]
                   for f in emu.received_frames() if "newTask" in f}  # fmt: skip
        client.close()

    assert not hung, f"{len(hung)} threads hung"
    assert failures == []
    assert len(results) >= THREADS * TASKS_PER_THREAD
    all_uuids: list[str] = []
    for (n, k), images in results.items():
        assert len(images) == 1 + (n + k) % 3
        (task_uuid,) = {i.task_uuid for i in images}
        assert prompts[task_uuid] == f"soak {n}/{k}"
        all_uuids.extend(i.uuid for i in images)
    assert len(all_uuids) == len(set(all_uuids)), "an image was delivered twice"
    assert drops >= MIN_DROPS, f"only {drops} drops in {elapsed:.1f} s: the soak tested too little"
    print(f"soak: {len(results)} tasks, {len(all_uuids)} images, {drops} drops, {elapsed:.1f} s")
