"""Argument checks: each names the parameter and what is allowed, and a call with a bad
argument sends nothing to the server."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

import diffusionmaster
from diffusionmaster import InvalidArgumentError, Model, Scheduler, Size, _inputs, _validate
from diffusionmaster.models import image_format
from diffusionmaster.testing import Emulator

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


@pytest.mark.parametrize(
    ("spelling", "size_id"),
    [("512x768", 2), (" 640X960 ", 20), ("W512_H768", 2), ("w960_h640", 21)],
)
def test_size_accepts_the_command_line_spelling(spelling: str, size_id: int) -> None:
    """A size may be a "WIDTHxHEIGHT" string or a Size name, as on the command line."""
    assert _validate.size("size", spelling) == size_id


@pytest.mark.parametrize("spelling", ["500x500", "512x", "x512", "512x768x2", "huge", ""])
def test_size_string_outside_the_table(spelling: str) -> None:
    """A size string that is not in the table is refused with the supported sizes."""
    with pytest.raises(InvalidArgumentError, match=r"^size: unsupported size .*512x512.*960x640$"):
        _validate.size("size", spelling)


@pytest.mark.parametrize(
    ("spelling", "model_id"), [("SDXL_V1_0", 4), ("sdxl_v1_0", 4), ("dreamshaper-v7-0", 20)]
)
def test_model_accepts_table_names(spelling: str, model_id: int) -> None:
    """A model may be named as in the Model table, in any case, with - for _."""
    assert _validate.model("model", spelling) == model_id


def test_unknown_model_name_lists_the_names() -> None:
    """An unknown model name is refused with the AIR form and the table's names."""
    with pytest.raises(InvalidArgumentError) as e:
        _validate.model("model", "SDXL")
    assert str(e.value) == (
        "model: a model string must look like 'civitai:4201@130072' or name a model of the "
        "table (SDXL_V1_0, REV_ANIMATED_V1_2_2, ABSOLUTEREALITY_V1_8_1, CYBERREALISTIC_V3_2, "
        "DREAMSHAPER_V7_0, GHOSTMIX_V2_0, SAMARITAN_3D_CARTOON_V3_0), got 'SDXL'"
    )


def test_table_id_accepts_member_names() -> None:
    """A scheduler or style may be given by its table name, in any case."""
    assert _validate.table_id("scheduler", "DPMPP_2M_KARRAS", Scheduler) == 22
    assert _validate.table_id("scheduler", "dpmpp-2m-karras", Scheduler) == 22
    with pytest.raises(InvalidArgumentError, match=r"^scheduler: must be one of 1 \(MOD"):
        _validate.table_id("scheduler", "EULER", Scheduler)


def test_names_and_sizes_reach_the_wire(client: diffusionmaster.Client, emulator: Emulator) -> None:
    """text2img with size="512x768" and table names sends the table's ids."""
    client.text2img(
        "a cat", size="512x768", model="SDXL_V1_0", scheduler="DPMPP_2M_KARRAS", style="anime"
    )
    (task,) = [f["newTask"] for f in emulator.received_frames() if "newTask" in f]
    assert (task["sizeId"], task["modelId"], task["schedulerId"], task["styleId"]) == (2, 4, 22, 2)


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("localhost:8765", "must start with ws:// or wss://, got 'localhost:8765'"),
        ("http://127.0.0.1:8765/v1/", "must start with ws:// or wss://, got 'http://127.0.0.1:8765/v1/'"),
        ("ws:///v1/", "has no host name: 'ws:///v1/'"),
        ("ws://127.0.0.1:99999/", "is not a valid URL (Port out of range 0-65535): 'ws://127.0.0.1:99999/'"),
        ("ws://[::1/", "is not a valid URL (Invalid IPv6 URL): 'ws://[::1/'"),
    ],
)  # fmt: skip
def test_malformed_url_is_refused_before_connecting(url: str, problem: str) -> None:
    """Client(url=...) refuses a URL that is not ws:// or wss:// with a host and port."""
    with pytest.raises(InvalidArgumentError) as e:
        diffusionmaster.Client("key", url=url)
    assert str(e.value) == f"url: {problem}"


def test_malformed_url_variable_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    """A malformed DIFFUSIONMASTER_URL is refused naming the variable."""
    monkeypatch.setenv("DIFFUSIONMASTER_URL", "127.0.0.1:8765")
    with pytest.raises(InvalidArgumentError) as e:
        diffusionmaster.Client("key")
    assert e.value.parameter == "DIFFUSIONMASTER_URL"


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


# -- every call refuses bad arguments before sending anything ------------------------------

GUIDE = PNG_1X1
CN = diffusionmaster.ControlNet


def _text2img(**kwargs: Any) -> Callable[[diffusionmaster.Client], object]:
    return lambda client: client.text2img("a cat", **kwargs)


BAD_CALLS: list[tuple[str, Callable[[diffusionmaster.Client], object], str]] = [
    # generation options beyond those of tests/test_client.py
    ("prompt not str", lambda c: c.text2img(None), "prompt: must be a non-empty string"),  # type: ignore[arg-type]
    ("negative prompt blank", _text2img(negative_prompt=" "), "negative_prompt: must be a non-empty"),
    ("number_results bool", _text2img(number_results=True), "number_results: must be an integer >= 1"),
    ("steps 0", _text2img(steps=0), "steps: must be an integer from 1 to 1000"),
    ("offset -1", _text2img(offset=-1), "offset: must be an integer >= 0"),
    ("size list", _text2img(size=[500, 500]), "size: unsupported size [500, 500]; supported (width, height): 512x512, 512x768"),
    ("size id 10", _text2img(size=10), "size: unsupported size 10; supported"),
    ("model AIR", _text2img(model="civitai:abc"), "model: a model string must look like 'civitai:4201@130072'"),
    ("guidance nan", _text2img(guidance=float("nan")), "guidance: must be a number from 0 to 10, got nan"),
    ("scheduler 27", _text2img(scheduler=27), "scheduler: must be one of 1 (MODEL_DEFAULT), 2 (DDIM)"),
    ("style 0", _text2img(style=0), "style: must be one of 1 (NONE), 2 (ANIME)"),
    ("language_id 0", _text2img(language_id=0), "language_id: must be an integer from 1 to 298, got 0"),
    ("return_base64", _text2img(return_base64=None), "return_base64: must be True or False"),
    ("use_cache", _text2img(use_cache=1), "use_cache: must be True or False"),
    ("prompt_weighting", _text2img(prompt_weighting="y"), "prompt_weighting: must be True or False"),
    ("on_image", _text2img(on_image=3), "on_image: must be callable, got 3"),
    ("lora not a list", _text2img(lora=diffusionmaster.Lora("civitai:1@2")), "lora: must be a list"),
    ("lora item", _text2img(lora=["civitai:1@2"]), "lora[0]: must be a Lora(model, weight)"),
    ("lora model", _text2img(lora=[diffusionmaster.Lora("my-lora", 0.5)]), "lora[0].model: must be an AIR model id like 'civitai:4201@130072'"),
    # ControlNet (protocol §3, §8.6)
    ("controlnet item", _text2img(controlnet=[{"preprocessor": "canny"}]), "controlnet[0]: must be a ControlNet(preprocessor, guide_image)"),
    ("preprocessor", _text2img(controlnet=[CN("depth", GUIDE)]), "controlnet[0].preprocessor: must be one of canny, depth_leres, depth_midas"),
    ("SDXL preprocessor", _text2img(model=diffusionmaster.Model.SDXL_V1_0, controlnet=[CN("openpose", GUIDE)]), "controlnet[0].preprocessor: must be one of canny, depth_leres, depth_midas, depth_zoe, inpaint_global_harmonious; got 'openpose'"),
    ("guide missing", _text2img(controlnet=[CN("canny", None)]), "controlnet[0].guide_image: is required"),
    ("weight", _text2img(controlnet=[CN("canny", GUIDE, weight=1.5)]), "controlnet[0].weight: must be a number from 0 to 1"),
    ("end_step over default steps", _text2img(controlnet=[CN("canny", GUIDE, end_step=21)]), "controlnet[0].end_step: must be an integer from 0 to 20, got 21"),
    ("end_step over steps", _text2img(steps=30, controlnet=[CN("canny", GUIDE, end_step=31)]), "controlnet[0].end_step: must be an integer from 0 to 30"),
    ("start after end", _text2img(controlnet=[CN("canny", GUIDE, start_step=9, end_step=3)]), "controlnet[0].start_step: 9 is after end_step 3"),
    ("percentage", _text2img(controlnet=[CN("canny", GUIDE, start_percentage=1.2)]), "controlnet[0].start_percentage: must be a number from 0 to 1"),
    ("percentages reversed", _text2img(controlnet=[CN("canny", GUIDE, start_percentage=0.8, end_percentage=0.2)]), "controlnet[0].start_percentage: 0.8 is after end_percentage 0.2"),
    ("both step forms", _text2img(controlnet=[CN("canny", GUIDE, start_step=1, end_percentage=0.5)]), "controlnet[0]: give start_step/end_step or start_percentage/end_percentage, not both"),
    ("control_mode", _text2img(controlnet=[CN("canny", GUIDE, control_mode="strict")]), "controlnet[0].control_mode: must be one of balanced, controlnet, prompt; got 'strict'"),
    ("threshold range", _text2img(controlnet=[CN("canny", GUIDE, high_threshold_canny=256)]), "controlnet[0].high_threshold_canny: must be an integer from 0 to 255"),
    ("threshold not canny", _text2img(controlnet=[CN("depth_midas", GUIDE, low_threshold_canny=100)]), "controlnet[0].low_threshold_canny: only valid with preprocessor 'canny', not 'depth_midas'"),
    ("thresholds reversed", _text2img(controlnet=[CN("canny", GUIDE, low_threshold_canny=200, high_threshold_canny=100)]), "controlnet[0].low_threshold_canny: 200 is above high_threshold_canny 100"),
    # image-taking generation
    ("img2img without image", lambda c: c.img2img("x", None), "image: img2img needs an image"),
    ("inpaint without mask", lambda c: c.inpaint("x", GUIDE, None), "mask: inpaint needs both"),
    ("mask without image", lambda c: c.stream_images("x", mask=GUIDE), "mask: inpainting needs image= as well as mask="),
    # other tasks
    ("upscale factor 1", lambda c: c.upscale(GUIDE, 1), "factor: must be an integer from 2 to 4, got 1"),
    ("upscale factor 5", lambda c: c.upscale(GUIDE, 5), "factor: must be an integer from 2 to 4, got 5"),
    ("upscale factor str", lambda c: c.upscale(GUIDE, "2"), "factor: must be an integer from 2 to 4, got '2'"),
    ("upscale timeout", lambda c: c.upscale(GUIDE, timeout="soon"), "timeout: must be seconds >= 0 or None"),
    ("remove_background image", lambda c: c.remove_background(b"BM"), "image: the data is not a PNG, JPEG or WEBP image"),
    ("image2text image", lambda c: c.image2text(3.5), "image: expected an image"),
    ("upload_image image", lambda c: c.upload_image("no/such/file.png"), "image: cannot read image file 'no/such/file.png'"),
    ("versions 0", lambda c: c.enhance_prompt("x", versions=0), "versions: must be an integer from 1 to 5, got 0"),
    ("versions 6", lambda c: c.enhance_prompt("x", versions=6), "versions: must be an integer from 1 to 5, got 6"),
    ("max_length 0", lambda c: c.enhance_prompt("x", max_length=0), "max_length: must be an integer from 1 to 380, got 0"),
    ("max_length 381", lambda c: c.enhance_prompt("x", max_length=381), "max_length: must be an integer from 1 to 380, got 381"),
    ("enhance language_id", lambda c: c.enhance_prompt("x", language_id=299), "language_id: must be an integer from 1 to 298, got 299"),
    ("enhance prompt", lambda c: c.enhance_prompt(""), "prompt: must be a non-empty string"),
    ("preprocessor type", lambda c: c.preprocess_controlnet(GUIDE, "sobel"), "preprocessor: must be one of canny, depth, lineart, lineart_anime, mlsd, normalbae, openpose, scribble, seg, shuffle, softedge, tile; got 'sobel'"),
    ("preprocess width", lambda c: c.preprocess_controlnet(GUIDE, "canny", width=0), "width: must be an integer from 1 to 2048, got 0"),
    ("preprocess height", lambda c: c.preprocess_controlnet(GUIDE, "canny", height=2049), "height: must be an integer from 1 to 2048, got 2049"),
    ("preprocess threshold", lambda c: c.preprocess_controlnet(GUIDE, "canny", low_threshold_canny=-1), "low_threshold_canny: must be an integer from 0 to 255"),
    ("preprocess thresholds reversed", lambda c: c.preprocess_controlnet(GUIDE, "canny", low_threshold_canny=9, high_threshold_canny=8), "low_threshold_canny: 9 is above high_threshold_canny 8"),
    ("preprocess hands", lambda c: c.preprocess_controlnet(GUIDE, "openpose", include_hands_and_face="yes"), "include_hands_and_face: must be True or False"),
    ("preprocess mask", lambda c: c.preprocess_controlnet(GUIDE, "canny", mask=b"nope"), "mask: the data is not a PNG, JPEG or WEBP image"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("call", "message"), [c[1:] for c in BAD_CALLS], ids=[c[0] for c in BAD_CALLS]
)
def test_bad_argument_is_refused_before_sending(
    client: diffusionmaster.Client,
    emulator: Emulator,
    call: Callable[[diffusionmaster.Client], object],
    message: str,
) -> None:
    """A bad argument raises InvalidArgumentError with what is allowed; only newConnection arrived."""
    with pytest.raises(InvalidArgumentError) as info:
        call(client)
    assert str(info.value).startswith(message)
    assert isinstance(info.value, ValueError)
    assert [list(f) for f in emulator.received_frames()] == [["newConnection"]]


@pytest.mark.parametrize(
    "call",
    [
        lambda c: c.text2img("x", colour="red"),
        lambda c: c.text2img("x", image=PNG_1X1),
        lambda c: c.img2img("x", PNG_1X1, mask=PNG_1X1),
        lambda c: c.stream_images("x", language=23),
    ],
    ids=["unknown option", "text2img image", "img2img mask", "old language name"],
)
def test_unknown_keyword_is_a_type_error(
    client: diffusionmaster.Client,
    emulator: Emulator,
    call: Callable[[diffusionmaster.Client], object],
) -> None:
    """An unknown keyword raises TypeError listing the allowed ones; nothing is sent."""
    with pytest.raises(
        TypeError,
        match=r"unexpected keyword argument\(s\) .*; allowed: negative_prompt, number_results",
    ):
        call(client)
    assert [list(f) for f in emulator.received_frames()] == [["newConnection"]]


def test_air_ids() -> None:
    """AIR ids look like source:model@version."""
    assert _validate.air("lora[0].model", "civitai:132942@146296") == "civitai:132942@146296"
    for bad in ("civitai:132942", "civitai:a@1", ":1@2", "132942@146296", 5):
        with pytest.raises(InvalidArgumentError, match="must be an AIR model id"):
            _validate.air("lora[0].model", bad)


def test_size_accepts_a_list_pair() -> None:
    """A [width, height] list works like a tuple; floats do not."""
    assert _validate.size("size", [768, 1344]) == 17
    with pytest.raises(InvalidArgumentError, match="unsupported size"):
        _validate.size("size", (512.0, 512.0))


def test_controlnet_steps_default_to_the_server_default() -> None:
    """Without steps, ControlNet steps are bounded by the server default of 20."""
    item = CN("canny", GUIDE, start_step=0, end_step=20)
    assert _validate.controlnet("controlnet[0]", item, steps=None, model_id=13) == item
    assert _validate.DEFAULT_STEPS == 20


def test_controlnet_returns_the_parsed_values() -> None:
    """Enum members come back as their strings and an int weight as a float."""
    item = CN("canny", GUIDE, weight=1, control_mode=diffusionmaster.ControlMode.PROMPT)
    parsed = _validate.controlnet("controlnet[0]", item, steps=None, model_id=13)
    assert (parsed.weight, type(parsed.weight)) == (1.0, float)
    assert (parsed.control_mode, type(parsed.control_mode)) == ("prompt", str)


def test_lora_returns_model_and_weight() -> None:
    """A Lora is returned as its (model, weight) with the weight as a float."""
    assert _validate.lora("lora[0]", diffusionmaster.Lora("civitai:1@2", 1)) == ("civitai:1@2", 1.0)
