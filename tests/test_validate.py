"""Unit tests of the argument checks: each names the parameter and what is allowed."""

from __future__ import annotations

import pytest

from diffusionmaster import InvalidArgumentError, Model, Scheduler, Size, _inputs, _validate
from diffusionmaster.models import image_format

PNG_1X1 = bytes.fromhex(
    "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
    "1f15c4890000000d49444154789c63f8cfc0f00f0004850180848a9921"
    "0000000049454e44ae426082"
)


def test_integer_in_range() -> None:
    """An integer inside the range is returned as is."""
    assert _validate.integer("steps", 20, 1, 1000) == 20


@pytest.mark.parametrize("value", [0, 1001, 2.5, True, "20", None])
def test_integer_out_of_range_or_wrong_type(value: object) -> None:
    """Anything but an int in range raises, naming the parameter and the range."""
    with pytest.raises(
        InvalidArgumentError, match=r"^steps: must be an integer from 1 to 1000"
    ) as e:
        _validate.integer("steps", value, 1, 1000)
    assert e.value.parameter == "steps"
    assert isinstance(e.value, ValueError)


@pytest.mark.parametrize("value", [-0.1, 10.5, float("nan"), "7", None, False])
def test_guidance_range(value: object) -> None:
    """Guidance outside 0-10 (or not a number) is refused with the range in the message."""
    with pytest.raises(InvalidArgumentError, match=r"guidance: must be a number from 0 to 10"):
        _validate.number("guidance", value, 0, 10)


def test_size_from_tuple_enum_and_id() -> None:
    """A size may be (width, height), a Size, or a sizeId."""
    assert _validate.size("size", (1024, 1024)) == 11
    assert _validate.size("size", Size.W512_H768) == 2
    assert _validate.size("size", 21) == 21


def test_unsupported_size_lists_supported_ones() -> None:
    """An unsupported size names the supported (width, height) pairs."""
    with pytest.raises(
        InvalidArgumentError, match=r"unsupported size \(100, 100\).*512x512.*960x640"
    ):
        _validate.size("size", (100, 100))


def test_table_id_lists_members() -> None:
    """An unknown scheduler id lists the allowed ids with their names."""
    with pytest.raises(
        InvalidArgumentError, match=r"scheduler: must be one of 1 \(MODEL_DEFAULT\)"
    ):
        _validate.table_id("scheduler", 99, Scheduler)
    assert _validate.table_id("scheduler", Scheduler.DDIM, Scheduler) == 2


def test_model_accepts_table_ids_and_air_strings() -> None:
    """Models are table ids or AIR strings."""
    assert _validate.model("model", Model.SDXL_V1_0) == 4
    assert _validate.model("model", "civitai:4201@130072") == "civitai:4201@130072"
    with pytest.raises(InvalidArgumentError, match=r"model: must be one of 4 \(SDXL_V1_0\)"):
        _validate.model("model", 3)
    with pytest.raises(InvalidArgumentError, match="model: a model string must look like"):
        _validate.model("model", "dreamshaper")


def test_choice_lists_allowed_strings() -> None:
    """A string choice outside the set lists the set."""
    with pytest.raises(InvalidArgumentError, match="preprocessor: must be one of a, b; got 'c'"):
        _validate.choice("preprocessor", "c", {"a", "b"})


def test_blank_text_refused() -> None:
    """A blank prompt is refused."""
    with pytest.raises(InvalidArgumentError, match="prompt: must be a non-empty string"):
        _validate.text("prompt", "   ")


def test_image_format_by_magic_bytes() -> None:
    """PNG, JPEG and WEBP are recognised by their magic bytes."""
    assert image_format(PNG_1X1) == "png"
    assert image_format(b"\xff\xd8\xff\xe0rest") == "jpeg"
    assert image_format(b"RIFF\x00\x00\x00\x00WEBPVP8 ") == "webp"
    assert image_format(b"GIF89a") is None


def test_load_uuid_and_bytes() -> None:
    """A UUID string is kept as is; PNG bytes are returned for upload."""
    uuid = "96eeec33-8e74-4a9f-a06c-ae58acbc3529"
    assert _inputs.load("image", uuid) == uuid
    assert _inputs.load("image", PNG_1X1) == PNG_1X1


def test_load_missing_file_names_the_parameter(tmp_path: object) -> None:
    """A missing file raises InvalidArgumentError naming the parameter and the path."""
    with pytest.raises(InvalidArgumentError, match=r"mask: cannot read image file '.*nope.png'"):
        _inputs.load("mask", "/nonexistent/nope.png")


def test_load_unsupported_data() -> None:
    """Bytes that are not PNG, JPEG or WEBP are refused."""
    with pytest.raises(InvalidArgumentError, match="image: the data is not a PNG, JPEG or WEBP"):
        _inputs.load("image", b"GIF89a....")


def test_load_wrong_type() -> None:
    """An object of another type is refused with the list of accepted inputs."""
    with pytest.raises(InvalidArgumentError, match="image: expected an image: a path, bytes"):
        _inputs.load("image", 42)
