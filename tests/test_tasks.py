"""Every task of the API end to end: a real Client on the emulator, real sockets on 127.0.0.1."""

from __future__ import annotations

import io
import json
import threading
import uuid
from typing import Any

import pytest
from PIL import Image as PILImage

import diffusionmaster
from diffusionmaster import (
    ControlMode,
    ControlNet,
    Image,
    Lora,
    Model,
    TaskError,
    UploadedImage,
    tables,
)
from diffusionmaster.testing import Emulator

from .conftest import make_client, seconds


def _png(size: tuple[int, int] = (64, 48), color: str = "red", mode: str = "RGB") -> bytes:
    buffer = io.BytesIO()
    PILImage.new(mode, size, color).save(buffer, "PNG")
    return buffer.getvalue()


def _bodies(emu: Emulator, key: str) -> list[dict[str, Any]]:
    return [f[key] for f in emu.received_frames() if key in f]


def _keys(emu: Emulator) -> list[str]:
    return [next(iter(f)) for f in emu.received_frames()]


# -- the chain of the issue ----------------------------------------------------------


def test_chain_upload_img2img_inpaint_upscale_remove_background_image2text(
    client: diffusionmaster.Client, emulator: Emulator
) -> None:
    """Each result feeds the next call, and every image has the size and format expected."""
    uploaded = client.upload_image(_png((640, 480), "navy"))
    (edited,) = client.img2img("a castle at night", uploaded, size=(768, 512))
    (fixed,) = client.inpaint("a dragon", edited, _png((512, 512), "white", "L"))
    big = client.upscale(fixed, 2)
    cutout = client.remove_background(big)
    caption = client.image2text(cutout)

    assert edited.to_pil().size == (768, 512)
    assert fixed.to_pil().size == (512, 512)
    assert big.to_pil().size == (1024, 1024)
    picture = cutout.to_pil()
    assert (cutout.format, picture.mode, picture.size) == ("png", "RGBA", (1024, 1024))
    assert picture.getpixel((0, 0))[3] == 0  # a transparent corner
    assert picture.getpixel((512, 512))[3] == 255  # an opaque centre
    assert caption == "a dragon"
    first, second = _bodies(emulator, "newTask")
    assert (first["taskType"], first["imageInitiatorUUID"]) == (2, uploaded.uuid)
    assert (second["taskType"], second["imageInitiatorUUID"]) == (3, edited.uuid)
    assert _keys(emulator) == [
        "newConnection", "newImageUpload", "newTask", "newImageUpload", "newTask",
        "newUpscaleGan", "newRemoveBackground", "newReverseImageClip",
    ]  # fmt: skip


# -- generation ----------------------------------------------------------------------


def test_img2img_sends_task_type_2_with_all_options(
    client: diffusionmaster.Client, emulator: Emulator
) -> None:
    """img2img maps every option to its wire field."""
    (source,) = client.text2img("a field")
    client.img2img(
        "a field in winter", source, negative_prompt="snowmen", number_results=2,
        size=(1024, 1024), model=Model.SDXL_V1_0, steps=30, guidance=6.5, seed=9,
        scheduler=diffusionmaster.Scheduler.DDIM, style=diffusionmaster.Style.ANIME,
        clip_skip=1, language_id=23, use_cache=False, check_nsfw=True, prompt_weighting=True,
        lora=[Lora("civitai:132942@146296", 0.6)],
    )  # fmt: skip
    body = _bodies(emulator, "newTask")[1]
    del body["taskUUID"]
    assert body == {
        "taskType": 2, "promptText": "a field in winter -no snowmen", "numberResults": 2,
        "modelId": 4, "sizeId": 11, "offset": 0, "steps": 30, "gScale": 6.5, "seed": 9,
        "useCache": False, "schedulerId": 2, "styleId": 2, "clipSkip": 1,
        "promptLanguageId": 23, "checkNsfw": True, "usePromptWeighting": True,
        "imageInitiatorUUID": source.uuid,
        "lora": [{"modelId": "civitai:132942@146296", "weight": 0.6}],
    }  # fmt: skip


def test_results_carry_server_metadata(client: diffusionmaster.Client) -> None:
    """An image carries the server's NSFW flag, cost and alt text."""
    (image,) = client.text2img("an nsfw test", negative_prompt="blur", check_nsfw=True)
    assert (image.nsfw, image.cost, image.alt_text) == (True, 0.0013, "an nsfw test")


def test_text2img_with_controlnet_is_task_type_9(
    client: diffusionmaster.Client, emulator: Emulator
) -> None:
    """A ControlNet without an initial image sends taskType 9 with every ControlNet field."""
    control = ControlNet(
        "canny", _png(), weight=0.5, start_percentage=0.1, end_percentage=0.9,
        control_mode=ControlMode.BALANCED, low_threshold_canny=100, high_threshold_canny=200,
    )  # fmt: skip
    (image,) = client.text2img("a tower", controlnet=[control])
    (upload,) = _bodies(emulator, "newImageUpload")
    (task,) = _bodies(emulator, "newTask")
    guide = task["controlNet"][0].pop("guideImageUUID")
    assert task["taskType"] == 9
    assert "imageInitiatorUUID" not in task
    assert task["controlNet"] == [
        {"preprocessor": "canny", "weight": 0.5, "startStepPercentage": 0.1,
         "endStepPercentage": 0.9, "controlMode": "balanced", "lowThresholdCanny": 100,
         "highThresholdCanny": 200},
    ]  # fmt: skip
    assert str(uuid.UUID(guide)) == guide and upload["taskType"] == 7
    assert image.to_pil().size == (512, 512)


def test_img2img_with_controlnet_is_task_type_10(
    client: diffusionmaster.Client, emulator: Emulator
) -> None:
    """A ControlNet with an initial image sends taskType 10 and no mask."""
    (source,) = client.text2img("a tower")
    client.img2img("a tower", source, steps=10, controlnet=[ControlNet("tile_gaussian", source,
                   start_step=2, end_step=8)])  # fmt: skip
    task = _bodies(emulator, "newTask")[1]
    assert (task["taskType"], task["imageInitiatorUUID"]) == (10, source.uuid)
    assert "imageMaskInitiatorUUID" not in task
    assert task["controlNet"] == [
        {"preprocessor": "tile_gaussian", "weight": 1.0, "guideImageUUID": source.uuid,
         "startStep": 2, "endStep": 8},
    ]  # fmt: skip


def test_inpaint_with_controlnet_is_task_type_10_with_mask(
    client: diffusionmaster.Client, emulator: Emulator
) -> None:
    """Inpainting with a ControlNet sends taskType 10 with the mask."""
    (source,) = client.text2img("a tower")
    mask = client.upload_image(_png((512, 512), "white", "L"))
    client.inpaint("a door", source, mask, controlnet=[ControlNet("depth_midas", source)])
    task = _bodies(emulator, "newTask")[1]
    assert (task["taskType"], task["imageInitiatorUUID"], task["imageMaskInitiatorUUID"]) == (
        10, source.uuid, mask.uuid,
    )  # fmt: skip


def test_controlnet_guide_url_is_sent_as_guide_image_url(
    client: diffusionmaster.Client, emulator: Emulator
) -> None:
    """An http(s) URL as guide image is sent as guideImageUrl, with nothing uploaded."""
    (source,) = client.text2img("a tower")
    assert source.url is not None
    client.text2img("a tower", controlnet=[ControlNet("canny", source.url)])
    control = _bodies(emulator, "newTask")[1]["controlNet"][0]
    assert control == {"preprocessor": "canny", "weight": 1.0, "guideImageUrl": source.url}
    assert "newImageUpload" not in _keys(emulator)


def test_sdxl_controlnet_preprocessor(client: diffusionmaster.Client, emulator: Emulator) -> None:
    """An SDXL model accepts the preprocessors of its own list."""
    (source,) = client.text2img("a tower")
    client.text2img("a tower", model=Model.SDXL_V1_0, controlnet=[ControlNet("depth_zoe", source)])
    assert _bodies(emulator, "newTask")[1]["controlNet"][0]["preprocessor"] == "depth_zoe"


@pytest.mark.parametrize("kind", sorted(tables.PREPROCESSOR_TYPES))
def test_preprocess_result_goes_with_its_preprocess_type(
    client: diffusionmaster.Client, emulator: Emulator, kind: str
) -> None:
    """The guide of preprocess_controlnet(image, kind) works as ControlNet(kind, guide)."""
    (source,) = client.text2img("a tower")
    guide = client.preprocess_controlnet(source, kind)
    (image,) = client.text2img("a castle", controlnet=[ControlNet(kind, guide)])
    assert image.uuid
    control = _bodies(emulator, "newTask")[1]["controlNet"][0]
    assert control == {
        "preprocessor": tables.CONTROLNET_PREPROCESSOR_OF[kind],
        "weight": 1.0,
        "guideImageUUID": guide.uuid,
    }


def test_every_preprocess_type_maps_to_a_controlnet_name() -> None:
    """Each preprocess type of §5 stands for exactly one ControlNet name of §8.6."""
    assert set(tables.CONTROLNET_PREPROCESSOR_OF) == tables.PREPROCESSOR_TYPES
    assert set(tables.CONTROLNET_PREPROCESSOR_OF.values()) <= tables.CONTROLNET_PREPROCESSORS


def test_sdxl_accepts_the_depth_preprocess_type(
    client: diffusionmaster.Client, emulator: Emulator
) -> None:
    """For SDXL, the depth preprocess type maps to depth_midas, which SDXL takes."""
    (source,) = client.text2img("a tower")
    guide = client.preprocess_controlnet(source, "depth")
    client.text2img("a castle", model=Model.SDXL_V1_0, controlnet=[ControlNet("depth", guide)])
    assert _bodies(emulator, "newTask")[1]["controlNet"][0]["preprocessor"] == "depth_midas"


# -- other tasks -----------------------------------------------------------------------


@pytest.mark.parametrize("factor", [2, 3, 4])
def test_upscale_resizes_by_the_factor(
    client: diffusionmaster.Client, emulator: Emulator, factor: int
) -> None:
    """upscale sends the factor, and the result is that many times larger."""
    image = client.upscale(_png((64, 48)), factor)
    (body,) = _bodies(emulator, "newUpscaleGan")
    assert body["upscaleFactor"] == factor
    assert image.to_pil().size == (64 * factor, 48 * factor)
    assert image.task_uuid == body["taskUUID"]


def test_upload_image_returns_uuid_and_url(
    client: diffusionmaster.Client, emulator: Emulator
) -> None:
    """upload_image returns the server's UUID, its PNG URL and the upload's task UUID."""
    uploaded = client.upload_image(_png((40, 30)))
    (body,) = _bodies(emulator, "newImageUpload")
    assert uploaded.task_uuid == body["taskUUID"]
    assert uploaded.url == f"{emulator.http_url}/image/{uploaded.uuid}.png"
    assert Image(uploaded.uuid, uploaded.url).to_pil().size == (40, 30)


def test_remove_background_returns_an_rgba_png(client: diffusionmaster.Client) -> None:
    """remove_background returns a PNG with an alpha channel, the size of the input."""
    cutout = client.remove_background(_png((80, 60), "green"))
    picture = cutout.to_pil()
    assert (cutout.format, picture.mode, picture.size) == ("png", "RGBA", (80, 60))


def test_image2text_returns_the_caption(client: diffusionmaster.Client) -> None:
    """image2text returns the server's text for the image."""
    (image,) = client.text2img("a quiet harbour", negative_prompt="boats")
    assert client.image2text(image) == "a quiet harbour"


def test_enhance_prompt_collects_versions_over_several_frames(
    client: diffusionmaster.Client, emulator: Emulator
) -> None:
    """Five versions sent two per frame come back as five distinct texts."""
    emulator.images_per_frame = 2
    texts = client.enhance_prompt("a cat", versions=5, max_length=60, language_id=23)
    assert emulator.wait_for(lambda: emulator.results_sent == 3, seconds(5))
    (body,) = _bodies(emulator, "newPromptEnhance")
    assert (body["promptVersions"], body["promptMaxLength"], body["promptLanguageId"]) == (
        5, 60, 23,
    )  # fmt: skip
    assert len(set(texts)) == 5
    assert all(t.startswith("a cat") and len(t) <= 60 for t in texts)


def test_enhance_prompt_defaults(client: diffusionmaster.Client, emulator: Emulator) -> None:
    """By default one version of up to 380 characters in language 1 is asked for."""
    (text,) = client.enhance_prompt("a dog")
    (body,) = _bodies(emulator, "newPromptEnhance")
    del body["taskUUID"]
    assert body == {
        "prompt": "a dog", "promptMaxLength": 380, "promptVersions": 1, "promptLanguageId": 1,
    }  # fmt: skip
    assert text.startswith("a dog")


def test_enhance_prompt_language_none_lets_the_server_detect(
    client: diffusionmaster.Client, emulator: Emulator
) -> None:
    """language_id=None leaves promptLanguageId out."""
    client.enhance_prompt("un chat", language_id=None)
    assert "promptLanguageId" not in _bodies(emulator, "newPromptEnhance")[0]


def test_preprocess_controlnet_go_shape_reply(
    client: diffusionmaster.Client, emulator: Emulator
) -> None:
    """preprocess_controlnet sends taskType 11 and returns the guide image of the reply."""
    guide = client.preprocess_controlnet(
        _png((64, 48)), "canny", width=128, low_threshold_canny=50, high_threshold_canny=150
    )
    (body,) = _bodies(emulator, "newPreProcessControlNet")
    (uploaded,) = _bodies(emulator, "newImageUpload")
    assert (body["taskType"], body["preProcessorType"], body["width"]) == (11, "canny", 128)
    assert (body["lowThresholdCanny"], body["highThresholdCanny"]) == (50, 150)
    assert "height" not in body and "guideImageMaskUUID" not in body
    assert guide.task_uuid == body["taskUUID"] and guide.nsfw is False
    assert (guide.format, guide.to_pil().size) == ("png", (128, 96))
    assert uploaded["taskType"] == 7


def test_preprocess_controlnet_with_mask_and_openpose(
    client: diffusionmaster.Client, emulator: Emulator
) -> None:
    """The mask and the openpose option reach the wire."""
    source = client.upload_image(_png((64, 64)))
    mask = client.upload_image(_png((64, 64), "white", "L"))
    client.preprocess_controlnet(source, "openpose", include_hands_and_face=True, mask=mask)
    (body,) = _bodies(emulator, "newPreProcessControlNet")
    assert body["guideImageUUID"] == source.uuid
    assert body["guideImageMaskUUID"] == mask.uuid
    assert body["includeHandsAndFaceOpenPose"] is True


def test_preprocess_controlnet_accepts_a_new_images_reply(
    client: diffusionmaster.Client, emulator: Emulator
) -> None:
    """A newImages frame for a preprocess task (the docs' shape) completes it too."""
    source = client.upload_image(_png())
    emulator.withhold_frames()  # keep the emulator's own (Go-shape) reply back
    future = client.submit(client.preprocess_controlnet, source, "depth")
    assert emulator.wait_for(lambda: "newPreProcessControlNet" in _keys(emulator), seconds(5))
    (body,) = _bodies(emulator, "newPreProcessControlNet")
    new_uuid = str(uuid.uuid4())
    item = {"imageSrc": source.url, "imageUUID": new_uuid, "taskUUID": body["taskUUID"],
            "bNSFWContent": False}  # fmt: skip
    # Over the socket, past the withheld reply.
    assert emulator.send_raw(json.dumps({"newImages": {"images": [item]}})) == 1
    assert future.result(seconds(5)) == Image(new_uuid, source.url, body["taskUUID"], False)


def test_task_error_of_an_upload_is_raised(
    client: diffusionmaster.Client, emulator: Emulator
) -> None:
    """A server error for the upload of an input ends the call with TaskError."""
    emulator.fail_next_task(error_id=415, message="bad image")
    with pytest.raises(TaskError) as info:
        client.upscale(_png(), 2)
    (upload,) = _bodies(emulator, "newImageUpload")
    assert (info.value.task_uuid, info.value.error_id) == (upload["taskUUID"], 415)
    assert "newUpscaleGan" not in _keys(emulator)


# -- streaming and callbacks -------------------------------------------------------------


def test_stream_yields_the_first_image_before_the_last_is_produced(
    client: diffusionmaster.Client, emulator: Emulator
) -> None:
    """stream_images yields each image on arrival, while the server still produces the rest."""
    emulator.latency = seconds(0.2)
    produced_when_yielded = [
        emulator.image_count for _ in client.stream_images("a slow river", number_results=3)
    ]
    assert produced_when_yielded[0] < 3
    assert produced_when_yielded[-1] == 3


def test_on_image_runs_in_the_calling_thread_before_each_yield(
    client: diffusionmaster.Client,
) -> None:
    """on_image gets each image in the caller's thread, just before the iterator yields it."""
    events: list[tuple[str, str, threading.Thread]] = []

    def on_image(image: Image) -> None:
        events.append(("callback", image.uuid, threading.current_thread()))

    for image in client.stream_images("birds", number_results=3, on_image=on_image):
        events.append(("yield", image.uuid, threading.current_thread()))
    assert [e[0] for e in events] == ["callback", "yield"] * 3
    assert [e[1] for e in events[::2]] == [e[1] for e in events[1::2]]
    assert {e[2] for e in events} == {threading.current_thread()}


def test_text2img_on_image_sees_every_image(client: diffusionmaster.Client) -> None:
    """text2img calls on_image for each image, in the order it returns them."""
    seen: list[Image] = []
    images = client.text2img("bees", number_results=4, on_image=seen.append)
    assert seen == images


def test_stream_checks_arguments_at_the_call(
    client: diffusionmaster.Client, emulator: Emulator
) -> None:
    """stream_images raises a bad argument at the call, before any iteration."""
    with pytest.raises(diffusionmaster.InvalidArgumentError, match="guidance"):
        client.stream_images("x", guidance=11)
    assert _keys(emulator) == ["newConnection"]


def test_stream_sends_only_when_iterated(
    client: diffusionmaster.Client, emulator: Emulator
) -> None:
    """Creating the stream sends nothing; the first next() uploads and sends."""
    stream = client.stream_images("x", image=_png())
    assert _keys(emulator) == ["newConnection"]
    next(stream)
    assert _keys(emulator) == ["newConnection", "newImageUpload", "newTask"]


def test_abandoned_stream_forgets_its_task(client: diffusionmaster.Client) -> None:
    """Stopping a stream early removes its task, so later results are dropped."""
    stream = client.stream_images("many", number_results=8)
    next(stream)
    stream.close()
    assert client._supervisor.in_flight == 0


def test_callback_error_ends_the_call(client: diffusionmaster.Client) -> None:
    """An exception raised by on_image propagates to the caller."""

    def on_image(image: Image) -> None:
        raise KeyError(image.uuid)

    with pytest.raises(KeyError):
        client.text2img("x", number_results=2, on_image=on_image)
    assert client._supervisor.in_flight == 0


# -- several tasks at once -----------------------------------------------------------------


def test_submit_runs_several_tasks_at_once(
    client: diffusionmaster.Client, emulator: Emulator
) -> None:
    """Futures from submit are all in flight together, and each gets its own results."""
    emulator.withhold_frames()
    prompts = [f"prompt {n}" for n in range(4)]
    futures = [client.submit(client.text2img, p, number_results=2) for p in prompts]
    assert emulator.wait_for(lambda: _keys(emulator).count("newTask") == 4, seconds(5))
    assert not any(f.done() for f in futures)
    emulator.release_frames()
    by_task = {t["taskUUID"]: t["promptText"] for t in _bodies(emulator, "newTask")}
    for prompt, future in zip(prompts, futures, strict=True):
        images = future.result(seconds(5))
        assert [by_task[i.task_uuid] for i in images] == [prompt, prompt]


def test_submit_after_close_raises(client: diffusionmaster.Client) -> None:
    """submit on a closed client raises ClientClosedError and starts no thread."""
    client.close()
    with pytest.raises(diffusionmaster.ClientClosedError):
        client.submit(client.text2img, "late")
    assert client._executor is None


def test_submit_future_carries_the_call_error(client: diffusionmaster.Client) -> None:
    """A failing call's exception is raised by Future.result."""
    future = client.submit(client.upscale, _png(), 7)
    with pytest.raises(diffusionmaster.InvalidArgumentError, match="factor"):
        future.result(seconds(5))


# -- the upload cache --------------------------------------------------------------------


def test_same_bytes_are_uploaded_once_per_client(
    client: diffusionmaster.Client, emulator: Emulator
) -> None:
    """Calls taking the same bytes (in any form) reuse the first upload's UUID."""
    data = _png()
    first = client.upload_image(data)
    client.img2img("a", data)
    client.upscale(io.BytesIO(data), 2)
    again = client.upload_image(bytearray(data))
    assert again == first
    assert _keys(emulator).count("newImageUpload") == 1
    assert _bodies(emulator, "newUpscaleGan")[0]["imageUUID"] == first.uuid


def test_uploads_are_cached_per_client(emulator: Emulator) -> None:
    """A second client uploads the same bytes again."""
    data = _png()
    with make_client(emulator) as one, make_client(emulator) as two:
        assert one.upload_image(data) != two.upload_image(data)
    assert _keys(emulator).count("newImageUpload") == 2


def test_concurrent_calls_with_the_same_bytes_upload_once(
    client: diffusionmaster.Client, emulator: Emulator
) -> None:
    """Six concurrent calls with the same new bytes upload them once and all use that UUID."""
    emulator.latency = seconds(0.1)
    data = _png((32, 32), "blue")
    futures = [client.submit(client.image2text, data) for _ in range(6)]
    captions = {f.result(seconds(10)) for f in futures}
    assert captions == {"an image of 32x32 pixels"}
    assert _keys(emulator).count("newImageUpload") == 1
    assert len({b["imageUUID"] for b in _bodies(emulator, "newReverseImageClip")}) == 1


def test_failed_upload_is_not_cached(client: diffusionmaster.Client, emulator: Emulator) -> None:
    """After an upload fails, the next call with the same bytes uploads them again."""
    data = _png()
    emulator.fail_next_task()
    with pytest.raises(TaskError):
        client.upload_image(data)
    uploaded = client.upload_image(data)
    assert isinstance(uploaded, UploadedImage)
    assert _keys(emulator).count("newImageUpload") == 2
