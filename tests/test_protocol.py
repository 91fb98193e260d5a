"""Unit tests of the pure protocol layer: every documented frame decodes, and
the encoder produces exactly the documented shapes."""

from __future__ import annotations

import json
from typing import Any

import pytest

from diffusionmaster import protocol
from diffusionmaster.errors import ProtocolError

from .conftest import DATA, SHARED

EXAMPLES: dict[str, Any] = json.loads((DATA / "protocol-examples.json").read_text())

# Examples whose values are type-name placeholders ("<number>", "bool", "<int: ...>"):
# only their key set is sourced (see _provenance). They are outliers: with the
# placeholder replaced by a value of the documented type they must decode; as they
# stand they must be rejected, since we read types strictly.
OUTLIERS: dict[str, tuple[tuple[str, ...], Any]] = {
    "newTask.textToImage.request.civitai": (("newTask", "offset"), 17),
    "newImages.response.withCost.shape": (("newImages", "images", 0, "cost"), 0.0013),
    "newPreProcessControlNet.response.docsVariant": (
        ("newImages", "images", 0, "bNSFWContent"),
        False,
    ),
}
FRAMES = {k: v for k, v in EXAMPLES.items() if not k.startswith("_")}


def _decoder(name: str) -> Any:
    return protocol.decode_request if ".request" in name else protocol.decode


def _replace(frame: Any, path: tuple[Any, ...], value: Any) -> Any:
    frame = json.loads(json.dumps(frame))
    target = frame
    for step in path[:-1]:
        target = target[step]
    target[path[-1]] = value
    return frame


@pytest.mark.parametrize("name", sorted(set(FRAMES) - set(OUTLIERS)))
def test_documented_frame_decodes(name: str) -> None:
    """Every documented frame that is not an outlier decodes to a known message."""
    event = _decoder(name)(json.dumps(FRAMES[name]))
    assert not isinstance(event, protocol.Unknown)


@pytest.mark.parametrize("name", sorted(OUTLIERS))
def test_outlier_decodes_once_placeholder_is_typed(name: str) -> None:
    """An outlier is rejected as it stands and decodes once its placeholder has a real value."""
    path, value = OUTLIERS[name]
    try:
        rejected = isinstance(_decoder(name)(json.dumps(FRAMES[name])), protocol.Invalid)
    except ProtocolError:
        rejected = True
    assert rejected
    event = _decoder(name)(json.dumps(_replace(FRAMES[name], path, value)))
    assert not isinstance(event, protocol.Unknown)


# Frames our encoder must reproduce exactly (after a decode of the documented frame).
ROUND_TRIP = [
    "connection.newConnection.request",
    "connection.newConnection.resume.request",
    "heartbeat.ping.request",
    "newTask.textToImage.request.jsSdk",
    "newTask.textToImage.request.pythonSdk",
    "newTask.imageToImage.request.jsSdk",
    "newTask.inpainting.request.jsSdk",
    "newTask.controlNetWithInitAndMask.request.jsSdk",
    "newImageUpload.request.pythonSdk",
    "newImageUpload.request.jsSdk",
    "newReverseImageClip.request",
    "newUpscaleGan.request",
    "newRemoveBackground.request.pythonSdk",
    "newPromptEnhance.request",
    "newPromptEnhance.request.jsSdkDefaults",
    "newPreProcessControlNet.request.goSdk",
]


@pytest.mark.parametrize("name", ROUND_TRIP)
def test_encoder_reproduces_documented_frame(name: str) -> None:
    """Encoding the decoded request gives back exactly the documented frame."""
    request = protocol.decode_request(json.dumps(FRAMES[name]))
    assert json.loads(protocol.encode(request)) == FRAMES[name]  # type: ignore[arg-type]


def test_encode_text_to_image_with_wire_names() -> None:
    """A newTask built in Python uses the wire names and omits unset options."""
    task = protocol.ImageTask(
        task_uuid="06463d32-e87c-4966-90da-ec3fcf3b65e5", task_type=1,
        prompt_text="a beautiful sunset over the ocean -no cloudy, rainy", number_results=3,
        model_id=13, size_id=1, steps=25, g_scale=7, seed=1234, use_cache=False, scheduler_id=22,
    )  # fmt: skip
    assert json.loads(protocol.encode(task)) == FRAMES["newTask.textToImage.request.pythonSdk"]


def test_encode_lora_and_controlnet_items() -> None:
    """LoRA and ControlNet items are encoded with their wire names."""
    task = protocol.ImageTask(
        task_uuid="t", task_type=9, prompt_text="p", number_results=1, model_id=4, size_id=1,
        lora=[protocol.LoraItem("civitai:132942@146296", 0.5)],
        control_net=[protocol.ControlNetItem("canny", 1.0, guide_image_uuid="g",
                                             start_step_percentage=0.0, control_mode="balanced")],
    )  # fmt: skip
    body = json.loads(protocol.encode(task))["newTask"]
    assert body["lora"] == [{"modelId": "civitai:132942@146296", "weight": 0.5}]
    assert body["controlNet"] == [
        {"preprocessor": "canny", "weight": 1.0, "guideImageUUID": "g",
         "startStepPercentage": 0.0, "controlMode": "balanced"}
    ]  # fmt: skip


def test_api_key_not_in_repr() -> None:
    """The API key never appears in the repr of the connection request."""
    assert "secret" not in repr(protocol.NewConnection("secret"))


def test_decode_images_result_fields() -> None:
    """A newImages frame decodes into items with every documented field."""
    event = protocol.decode(json.dumps(FRAMES["newImages.response"]))
    assert isinstance(event, protocol.ImagesResult)
    assert event.kind == "newImages"
    assert event.total_available_results == 18
    first = event.images[0]
    assert first.image_uuid == "87e9f0eb-ab36-4c17-95ca-4ae4ac48e383"
    assert first.task_uuid == "99e54383-551d-4029-9928-bc83177e26ea"
    assert first.nsfw is False
    assert first.cost is None
    assert (
        first.image_src == "https://im.runware.ai/image/ii/e1e7b7b8-046d-48f6-b09b-381d67bef00d.jpg"
    )


def test_decode_upscale_reply_keeps_its_kind() -> None:
    """The newUpscaleGan reply decodes to ImagesResult of kind newUpscaleGan."""
    event = protocol.decode(json.dumps(FRAMES["newUpscaleGan.response"]))
    assert isinstance(event, protocol.ImagesResult)
    assert event.kind == "newUpscaleGan"


def test_decode_error_with_task_uuid() -> None:
    """A task error frame keeps its id, message and task UUID."""
    event = protocol.decode('{"error": true, "errorId": 7, "errorMessage": "bad", "taskUUID": "t"}')
    assert event == protocol.ServerError(error_message="bad", error_id=7, task_uuid="t")


def test_decode_invalid_key_error() -> None:
    """The invalid-key frame decodes to a connection-level error with id 19."""
    event = protocol.decode(json.dumps(FRAMES["connection.error.invalidApiKey.response"]))
    assert event == protocol.ServerError(error_message="Invalid API key", error_id=19)


def test_unknown_frame_is_an_event_not_an_error() -> None:
    """An unknown top-level key decodes to Unknown."""
    event = protocol.decode('{"newSomething": {"x": 1}}')
    assert event == protocol.Unknown(key="newSomething", payload={"newSomething": {"x": 1}})


def test_unknown_fields_are_ignored() -> None:
    """Unknown fields inside a known frame are ignored."""
    event = protocol.decode(
        '{"newConnectionSessionUUID": {"connectionSessionUUID": "s", "extra": 1}}'
    )
    assert event == protocol.SessionEstablished("s")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{not json", "malformed JSON"),
        ("[1, 2]", "JSON list, expected an object"),
        ('{"newImages": {"images": [{"imageUUID": "i"}]}}', "missing required field 'taskUUID'"),
        ('{"newImages": []}', "newImages: expected an object"),
        ('{"newUploadedImageUUID": {"taskUUID": 5, "newImageUUID": "n"}}', "expected string"),
    ],
)
def test_malformed_frames_raise_protocol_error(text: str, message: str) -> None:
    """Malformed JSON or a known frame with missing or mistyped fields, naming no task, raises."""
    with pytest.raises(ProtocolError, match=message.replace("(", r"\(").replace("[", r"\[")):
        protocol.decode(text)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            '{"newUploadedImageUUID": {"taskUUID": "t", "newImageUUID": null}}',
            "newUploadedImageUUID: invalid field: expected string, got NoneType",
        ),
        (
            '{"newImages": {"images": [{"taskUUID": "t", "imageUUID": "i", "bNSFWContent": 1}]}}',
            "newImages: 1 of 1 items cannot be read: newImages.images[0]: invalid field: "
            "expected boolean, got int",
        ),
        ('{"newImages": {"images": 7, "x": {"taskUUID": "t"}}}', "newImages: invalid field"),
        ('{"newReverseClip": {"taskUUID": "t", "texts": ' + "[" * 100_000 + "}", "RecursionError"),
    ],
)
def test_malformed_frame_naming_a_task_decodes_to_invalid(text: str, message: str) -> None:
    """A malformed frame that names a task decodes to Invalid for that task, with the reason."""
    event = protocol.decode(text)
    assert isinstance(event, protocol.Invalid)
    assert event.task_uuids == ("t",)
    assert event.valid is None
    assert isinstance(event.error, ProtocolError)
    assert message in str(event.error)


@pytest.mark.parametrize("as_bytes", [False, True])
def test_nesting_too_deep_raises_protocol_error(as_bytes: bool) -> None:
    """JSON nested 200,000 deep raises ProtocolError (not RecursionError)."""
    text = "[" * 200_000 + "]" * 200_000
    with pytest.raises(ProtocolError, match="frame cannot be decoded: RecursionError") as info:
        protocol.decode(text.encode() if as_bytes else text)
    assert isinstance(info.value.__cause__, RecursionError)


def test_decode_errors_keep_no_traceback() -> None:
    """An undecodable frame's error and its cause hold no traceback (nor, so, the frame)."""
    event = protocol.decode('{"newImages": {"images": [{"taskUUID": "t", "x": ' + "[" * 9999 + "}")
    assert isinstance(event, protocol.Invalid)
    assert event.error.__traceback__ is None
    assert event.error.__cause__ is not None
    assert event.error.__cause__.__traceback__ is None


def test_one_bad_item_keeps_the_others() -> None:
    """A bad item names its task; the valid items of the same frame are kept, with the kind."""
    good = {"taskUUID": "a", "imageUUID": "i1"}
    frame = {
        "newUpscaleGan": {
            "images": [
                good,
                {"taskUUID": "b", "imageUUID": 5},
                "junk",
                {**good, "imageUUID": "i2"},
            ],
            "totalAvailableResults": 4,
        }
    }
    event = protocol.decode(json.dumps(frame))
    assert isinstance(event, protocol.Invalid)
    assert event.task_uuids == ("b",)
    assert str(event.error) == (
        "newUpscaleGan: 2 of 4 items cannot be read: newUpscaleGan.images[1]: invalid field: "
        "expected string, got int 5; newUpscaleGan.images[2]: expected an object, got str"
    )
    assert event.valid == protocol.ImagesResult(
        images=[protocol.ImageItem("a", "i1"), protocol.ImageItem("a", "i2")],
        total_available_results=4,
        kind="newUpscaleGan",
    )


def test_bad_frame_level_field_names_every_task() -> None:
    """A mistyped field of the frame itself (not of an item) names every task in the frame."""
    items = [{"taskUUID": "a", "imageUUID": "i"}, {"taskUUID": "b", "imageUUID": "j"}]
    text = json.dumps({"newImages": {"images": items, "totalAvailableResults": "many"}})
    event = protocol.decode(text)
    assert isinstance(event, protocol.Invalid)
    assert (event.task_uuids, event.valid) == (("a", "b"), None)


def test_named_tasks_are_capped() -> None:
    """At most MAX_NAMED distinct task UUIDs are taken from an unparseable frame."""
    text = "".join(f'{{"taskUUID": "t{n}"}},' for n in range(protocol.MAX_NAMED + 10))
    event = protocol.decode("[" + text)
    assert isinstance(event, protocol.Invalid)
    assert len(event.task_uuids) == protocol.MAX_NAMED
    assert event.task_uuids[:2] == ("t0", "t1")


def test_error_message_of_another_type_is_not_stringified() -> None:
    """An errorMessage that is not a string is replaced by its type name, never str()-ed."""
    event = protocol.decode('{"error": true, "errorId": 3, "errorMessage": {"a": [1]}}')
    assert event == protocol.ServerError("(errorMessage of type dict)", 3, None)


_ODD_VALUES: list[Any] = [None, True, 0, -1, 2**70, 1.5, "", "s", [], [None], {}, {"x": 1}]


def _paths(value: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    if isinstance(value, dict):
        return [p for k, v in value.items() for p in [(*path, k), *_paths(v, (*path, k))]]
    if isinstance(value, list):
        return [p for i, v in enumerate(value) for p in [(*path, i), *_paths(v, (*path, i))]]
    return []


@pytest.mark.parametrize(
    "name", sorted(n for n in FRAMES if ".request" not in n and n not in OUTLIERS)
)
def test_any_value_at_any_place_decodes_or_raises_protocol_error(name: str) -> None:
    """Every documented server frame, with any value at any place, decodes or raises ProtocolError."""
    outcomes = set()
    for path in _paths(FRAMES[name]):
        for value in _ODD_VALUES:
            text = json.dumps(_replace(FRAMES[name], path, value))
            try:
                outcomes.add(type(protocol.decode(text)).__name__)
                outcomes.add(type(protocol.decode(text.encode())).__name__)
            except ProtocolError:
                outcomes.add("ProtocolError")
    events = {cls.__name__ for cls in protocol.Event.__args__}  # type: ignore[attr-defined]
    assert outcomes <= events | {"ProtocolError"}  # nothing else escaped


def test_null_optional_field_reads_as_absent() -> None:
    """null for an optional field decodes as None."""
    event = protocol.decode(
        '{"newImages": {"images": [{"taskUUID": "t", "imageUUID": "i", "cost": null}]}}'
    )
    assert isinstance(event, protocol.ImagesResult)
    assert event.images[0].cost is None


def test_integer_field_rejects_boolean() -> None:
    """JSON true is not accepted where an integer is required."""
    with pytest.raises(ProtocolError, match="expected integer, got bool"):
        protocol.decode_request(
            '{"newUpscaleGan": {"taskUUID": "t", "imageUUID": "i", "upscaleFactor": true}}'
        )


def test_ping_and_pong() -> None:
    """The heartbeat frames encode and decode as documented."""
    assert json.loads(protocol.encode(protocol.Ping())) == {"ping": True}
    assert protocol.decode('{"pong": true}') == protocol.Pong()


@pytest.mark.skipif(not (SHARED / "protocol-examples.json").exists(), reason="no ../shared here")
def test_examples_copy_matches_the_spec() -> None:
    """tests/data holds the same examples as the spec beside the checkout."""
    spec = json.loads((SHARED / "protocol-examples.json").read_text())
    assert spec == EXAMPLES
