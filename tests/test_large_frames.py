"""Large frames: uploads are encoded without json.dumps when that gives the same text."""

from __future__ import annotations

import base64
import json
import os

import pytest

from diffusionmaster import protocol


def _dumps(message: protocol.ImageUpload) -> str:
    body = protocol.converter.unstructure(message)
    return json.dumps({message.KEY: body}, separators=(",", ":"), ensure_ascii=False)


def test_a_large_base64_upload_encodes_to_the_json_dumps_text() -> None:
    """A large plain base64 string is placed as it is, giving exactly json.dumps's text."""
    data = "data:image/png;base64," + base64.b64encode(os.urandom(300_000)).decode()
    message = protocol.ImageUpload(
        task_uuid="5a6f0c1e-0000-4000-8000-000000000001", image_base64=data
    )
    assert protocol.encode(message) == _dumps(message)
    assert json.loads(protocol.encode(message))["newImageUpload"]["imageBase64"] == data


@pytest.mark.parametrize("special", ['"', "\\", "\n", "\x00", "\x1f", "é\u2028"])
def test_large_strings_that_need_escaping_are_escaped(special: str) -> None:
    """A large string holding a character JSON escapes still encodes like json.dumps."""
    data = "A" * protocol.VERBATIM_MIN + special + "B"
    message = protocol.ImageUpload(task_uuid="t", image_base64=data)
    assert protocol.encode(message) == _dumps(message)
    assert json.loads(protocol.encode(message))["newImageUpload"]["imageBase64"] == data


def test_a_field_holding_the_placeholder_text_does_not_confuse_the_encoder() -> None:
    """Another field equal to the internal placeholder still gives json.dumps's text."""
    data = "A" * protocol.VERBATIM_MIN
    message = protocol.ImageUpload(task_uuid="@@verbatim-0@@", image_base64=data)
    assert protocol.encode(message) == _dumps(message)
