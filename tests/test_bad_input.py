"""Bad input never costs a paid result: refused at the call, before anything is sent."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest

import diffusionmaster
from diffusionmaster import InvalidArgumentError, RequestTimeoutError
from diffusionmaster.testing import Emulator

from .conftest import API_KEY, make_client


def _sent(emu: Emulator) -> list[str]:
    return [key for frame in emu.received_frames() for key in frame if key != "newConnection"]


@pytest.mark.parametrize("timeout", [math.inf * -1, math.nan, 1e12, "10", True, -1], ids=repr)
def test_bad_timeouts_send_nothing(
    client: diffusionmaster.Client, emulator: Emulator, timeout: Any
) -> None:
    """nan, negative, too large, strings and booleans are refused before sending."""
    with pytest.raises(InvalidArgumentError, match=r"^timeout: "):
        client.text2img("x", timeout=timeout)
    assert _sent(emulator) == []


def test_infinite_timeout_means_no_limit(client: diffusionmaster.Client) -> None:
    """timeout=inf is accepted as no limit (like None)."""
    (image,) = client.text2img("x", timeout=math.inf)
    assert image.uuid


def test_zero_timeout_sends_nothing(client: diffusionmaster.Client, emulator: Emulator) -> None:
    """A deadline that has already passed raises RequestTimeoutError and sends nothing."""
    for _ in range(20):
        with pytest.raises(RequestTimeoutError):
            client.text2img("x", timeout=0)
    assert _sent(emulator) == []


@pytest.mark.parametrize(
    ("kwargs", "parameter"),
    [
        ({"timeout": "10"}, "timeout"),
        ({"timeout": -1}, "timeout"),
        ({"connect_timeout": math.nan}, "connect_timeout"),
    ],
)
def test_client_durations_are_checked(
    emulator: Emulator, kwargs: dict[str, Any], parameter: str
) -> None:
    """Client(timeout=..., connect_timeout=...) are checked before connecting."""
    with pytest.raises(InvalidArgumentError, match=rf"^{parameter}: "):
        diffusionmaster.Client(API_KEY, url=emulator.url, **kwargs)
    assert emulator.connections_opened == 0


def test_non_string_api_key_is_refused(emulator: Emulator) -> None:
    """A non-string key is refused before any connection is made."""
    with pytest.raises(InvalidArgumentError, match=r"^api_key: must be a string"):
        diffusionmaster.Client(123, url=emulator.url)  # type: ignore[arg-type]
    assert emulator.connections_opened == 0


@pytest.mark.parametrize(
    ("kwargs", "parameter"),
    [
        ({"jitter": 1.5}, "jitter"),
        ({"jitter": -0.1}, "jitter"),
        ({"min_delay": 5.0, "max_delay": 1.0}, "min_delay"),
        ({"min_delay": "1"}, "min_delay"),
        ({"multiplier": 0.5}, "multiplier"),
        ({"resume_window": math.nan}, "resume_window"),
        ({"enabled": "yes"}, "enabled"),
    ],
)
def test_reconnect_checks_every_field(kwargs: dict[str, Any], parameter: str) -> None:
    """Reconnect refuses values that would make delays negative or attempts back to back."""
    with pytest.raises(InvalidArgumentError, match=rf"^{parameter}: "):
        diffusionmaster.Reconnect(**kwargs)


@pytest.mark.parametrize(
    ("kwargs", "parameter"),
    [({"interval": 0}, "interval"), ({"interval": -1.0}, "interval"), ({"timeout": 0}, "timeout")],
)
def test_heartbeat_checks_every_field(kwargs: dict[str, Any], parameter: str) -> None:
    """Heartbeat refuses a non-positive interval or timeout."""
    with pytest.raises(InvalidArgumentError, match=rf"^{parameter}: "):
        diffusionmaster.Heartbeat(**kwargs)


def test_state_listener_must_be_callable(client: diffusionmaster.Client) -> None:
    """add_state_listener refuses a non-callable."""
    with pytest.raises(InvalidArgumentError, match=r"^listener: must be callable"):
        client.add_state_listener("not a function")  # type: ignore[arg-type]


def test_lone_surrogate_in_a_prompt_is_refused(
    client: diffusionmaster.Client, emulator: Emulator
) -> None:
    """A prompt that cannot be UTF-8 encoded is InvalidArgumentError, not UnicodeEncodeError."""
    with pytest.raises(InvalidArgumentError, match=r"^prompt: .*surrogate"):
        client.text2img("a cat \udc80")
    with pytest.raises(InvalidArgumentError, match=r"^negative_prompt: "):
        client.text2img("a cat", negative_prompt="\ud800")
    assert _sent(emulator) == []


@pytest.mark.parametrize("method", ["upscale", "remove_background", "image2text", "upload_image"])
def test_a_missing_image_is_refused(
    client: diffusionmaster.Client, emulator: Emulator, method: str
) -> None:
    """None as the image is InvalidArgumentError naming it (it was a KeyError)."""
    with pytest.raises(InvalidArgumentError, match=r"^image: an image is required"):
        getattr(client, method)(None)
    assert _sent(emulator) == []


@pytest.mark.parametrize("name", ["../x", "/abs/path", "a/b", "..", "", "x\x00y"])
def test_save_into_a_folder_never_leaves_it(emulator: Emulator, tmp_path: Path, name: str) -> None:
    """A hostile image UUID never places the saved file outside the target folder."""
    image = diffusionmaster.Image._from_result(
        uuid=name, url=None, task_uuid="t", base64_data="iVBORw0KGgo="
    )
    target = tmp_path / "out"
    target.mkdir()
    written = image.save(target)
    assert written.parent == target
    assert written.resolve().is_relative_to(target.resolve())
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == [written.name]


def test_save_with_a_trailing_slash_makes_the_folder(emulator: Emulator, tmp_path: Path) -> None:
    """save("newdir/") creates the folder and writes the image inside it."""
    with make_client(emulator) as client:
        (image,) = client.text2img("x")
    written = image.save(f"{tmp_path}/new/nested/")
    assert written.parent == tmp_path / "new" / "nested"
    assert written.read_bytes() == image.read()


def test_save_creates_missing_parents(emulator: Emulator, tmp_path: Path) -> None:
    """A file name in missing folders gets its folders made."""
    with make_client(emulator) as client:
        (image,) = client.text2img("x")
    written = image.save(tmp_path / "a" / "b" / "pic.jpg")
    assert written == tmp_path / "a" / "b" / "pic.jpg" and written.stat().st_size > 0
