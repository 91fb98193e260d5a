"""Large frames: uploads are encoded without json.dumps when that gives the same text."""

from __future__ import annotations

import base64
import json
import os

import pytest

from diffusionmaster import protocol
from diffusionmaster.errors import ProtocolError


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


def _images_frame(*base64_values: str, separators: tuple[str, str] = (", ", ": ")) -> str:
    images = [
        {"imageSrc": f"http://x/{n}.jpg", "imageUUID": f"u{n}", "taskUUID": "t", "cost": 0.0013,
         "imageBase64Data": value, "imageAltText": 'a "quoted" alt'}
        for n, value in enumerate(base64_values)
    ]  # fmt: skip
    frame = {"newImages": {"images": images, "totalAvailableResults": len(images)}}
    return json.dumps(frame, separators=separators)


BIG = base64.b64encode(os.urandom(120_000)).decode()


@pytest.mark.parametrize("separators", [(", ", ": "), (",", ":")])
def test_a_large_result_frame_decodes_as_from_str(separators: tuple[str, str]) -> None:
    """A large newImages frame given as bytes decodes (base64 cut out) as its str does."""
    text = _images_frame(BIG, BIG[::-1], separators=separators)
    assert protocol._load_large(text.encode()) == json.loads(text)  # the fast path applies
    event = protocol.decode(bytearray(text.encode()))
    assert event == protocol.decode(text)
    assert isinstance(event, protocol.ImagesResult)
    assert [i.image_base64_data for i in event.images] == [BIG, BIG[::-1]]


@pytest.mark.parametrize(
    "text",
    [
        _images_frame(BIG.replace("/", "\\/")),  # escaped slashes: parsed in full
        _images_frame(BIG).replace(BIG, BIG + "é"),  # not ASCII
        '{"newImages": {"images": [], "imageBase64Data": "' + BIG + '"}}',  # not in images
        json.dumps(
            {
                "newImages": {
                    "images": [
                        {"taskUUID": "t", "imageUUID": "u", "imageBase64Data": "@@base64-0@@"}
                    ]
                },
                "x": {"imageBase64Data": BIG},
            }
        ),  # a placeholder-like value, and the field outside images
        '{"other": {"imageBase64Data": "' + BIG + '"}}',  # an unknown frame
    ],
)
def test_large_frames_of_another_shape_decode_as_from_str(text: str) -> None:
    """Large frames the fast path does not fit are parsed in full, as their str is."""
    assert protocol._load_large(text.encode()) is None
    assert protocol.decode(text.encode()) == protocol.decode(text)


def test_a_malformed_large_frame_is_a_protocol_error_for_its_task() -> None:
    """A large frame that is not valid JSON fails the task it names, as a small one does."""
    event = protocol.decode(_images_frame(BIG).encode()[:-1])
    assert isinstance(event, protocol.Invalid)
    assert event.task_uuids == ("t",)
    assert isinstance(event.error, ProtocolError)
    assert str(event.error).startswith("malformed JSON")
