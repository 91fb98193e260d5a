"""Testing your own code with the pytest plugin (installed with the package).

python -m pytest examples/test_with_emulator.py
"""

from __future__ import annotations

import pytest

from diffusionmaster import Client, TaskError


def make_thumbnail(client: Client, prompt: str) -> bytes:
    """The code under test: one small image for a prompt."""
    (image,) = client.text2img(prompt, size=(512, 512))
    return image.read()


def test_thumbnail_is_a_jpeg(diffusionmaster_client, diffusionmaster_emulator):
    data = make_thumbnail(diffusionmaster_client, "a red fox")
    assert data.startswith(b"\xff\xd8")
    (task,) = [f["newTask"] for f in diffusionmaster_emulator.received_frames() if "newTask" in f]
    assert task["promptText"] == "a red fox"


def test_server_error_reaches_the_caller(diffusionmaster_client, diffusionmaster_emulator):
    diffusionmaster_emulator.fail_next_task(500, "no GPU left")
    with pytest.raises(TaskError, match="no GPU left"):
        make_thumbnail(diffusionmaster_client, "a red fox")


def test_survives_a_dropped_connection(diffusionmaster_client, diffusionmaster_emulator):
    diffusionmaster_emulator.withhold_frames()
    future = diffusionmaster_client.submit(make_thumbnail, diffusionmaster_client, "a boat")
    diffusionmaster_emulator.wait_for(lambda: diffusionmaster_emulator.received_count == 2, 5)
    diffusionmaster_emulator.drop_connections()
    diffusionmaster_emulator.release_frames()
    assert future.result(timeout=30).startswith(b"\xff\xd8")
