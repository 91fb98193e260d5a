"""The library's logging never shows an API key, on the client side or the emulator's."""

from __future__ import annotations

import logging

import pytest

from diffusionmaster.testing._logs import redact

from .conftest import API_KEY, make_client


def test_redact_masks_api_key_values() -> None:
    """Every apiKey value in a text is replaced, including a truncated one."""
    text = '{"newConnection":{"apiKey":"s3cret","x":1}} {"apiKey": "abc'
    assert redact(text) == '{"newConnection":{"apiKey":"***","x":1}} {"apiKey": "***'


def test_no_record_shows_the_key(emulator: object, caplog: pytest.LogCaptureFixture) -> None:
    """At DEBUG, no record of the client or of the emulator's websockets shows the key."""
    caplog.set_level(logging.DEBUG)
    with make_client(emulator) as client:  # type: ignore[arg-type]
        client.text2img("quiet")
    messages = [r.getMessage() for r in caplog.records]
    assert any('"apiKey":"***"' in m for m in messages)
    assert all(API_KEY not in m for m in messages)
