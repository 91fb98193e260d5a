"""Image inputs of every kind, end to end: what is uploaded, what is sent by reference,
and what is refused before anything is sent."""

from __future__ import annotations

import base64
import io
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from PIL import Image as PILImage

import diffusionmaster
from diffusionmaster import Image, InvalidArgumentError, UploadedImage, _inputs
from diffusionmaster.testing import Emulator

from .conftest import seconds


def _encode(fmt: str, size: tuple[int, int] = (64, 48), mode: str = "RGB") -> bytes:
    buffer = io.BytesIO()
    PILImage.new(mode, size, "orange").save(buffer, fmt)
    return buffer.getvalue()


PNG = _encode("PNG")


def _bodies(emu: Emulator, key: str) -> list[dict[str, Any]]:
    return [f[key] for f in emu.received_frames() if key in f]


def _keys(emu: Emulator) -> list[str]:
    return [next(iter(f)) for f in emu.received_frames()]


def _write(tmp_path: Path, data: bytes, name: str = "input.png") -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


# Each kind of local input, built from PNG bytes (the file object is opened by the test).
LOCAL_KINDS: dict[str, Callable[[Path], Any]] = {
    "str path": lambda tmp: str(_write(tmp, PNG)),
    "PathLike": lambda tmp: _write(tmp, PNG),
    "bytes": lambda tmp: PNG,
    "bytearray": lambda tmp: bytearray(PNG),
    "memoryview": lambda tmp: memoryview(PNG),
    "BytesIO": lambda tmp: io.BytesIO(PNG),
}


@pytest.mark.parametrize("kind", sorted(LOCAL_KINDS))
def test_local_input_is_uploaded_as_is(
    client: diffusionmaster.Client, emulator: Emulator, tmp_path: Path, kind: str
) -> None:
    """A local PNG in any form is uploaded byte for byte, and the task names the upload."""
    caption = client.image2text(LOCAL_KINDS[kind](tmp_path))
    (upload,) = _bodies(emulator, "newImageUpload")
    (task,) = _bodies(emulator, "newReverseImageClip")
    assert upload["imageBase64"] == "data:image/png;base64," + base64.b64encode(PNG).decode()
    assert caption == "an image of 64x48 pixels"
    assert task["imageUUID"] == client.upload_image(PNG).uuid  # from the cache: nothing sent
    assert _keys(emulator) == ["newConnection", "newImageUpload", "newReverseImageClip"]


def test_open_binary_file_is_uploaded(
    client: diffusionmaster.Client, emulator: Emulator, tmp_path: Path
) -> None:
    """An open binary file is read and uploaded."""
    with _write(tmp_path, PNG).open("rb") as f:
        client.upscale(f, 2)
    (upload,) = _bodies(emulator, "newImageUpload")
    assert upload["imageBase64"] == "data:image/png;base64," + base64.b64encode(PNG).decode()


@pytest.mark.parametrize(("fmt", "mime"), [("JPEG", "image/jpeg"), ("WEBP", "image/webp")])
def test_jpeg_and_webp_are_uploaded_with_their_type(
    client: diffusionmaster.Client, emulator: Emulator, fmt: str, mime: str
) -> None:
    """JPEG and WEBP bytes are uploaded with their own media type."""
    data = _encode(fmt, (50, 40))
    assert client.image2text(data) == "an image of 50x40 pixels"
    (upload,) = _bodies(emulator, "newImageUpload")
    assert upload["imageBase64"] == f"data:{mime};base64," + base64.b64encode(data).decode()


def test_pil_image_is_uploaded_as_png(client: diffusionmaster.Client, emulator: Emulator) -> None:
    """A PIL image is encoded as PNG and uploaded."""
    picture = PILImage.new("RGBA", (30, 20), (0, 128, 255, 100))
    client.upscale(picture, 2)
    (upload,) = _bodies(emulator, "newImageUpload")
    prefix = "data:image/png;base64,"
    assert upload["imageBase64"].startswith(prefix)
    sent = PILImage.open(io.BytesIO(base64.b64decode(upload["imageBase64"][len(prefix) :])))
    assert (sent.format, sent.mode, sent.size) == ("PNG", "RGBA", (30, 20))
    assert sent.getpixel((0, 0)) == (0, 128, 255, 100)


def test_pil_image_in_a_mode_png_cannot_store_is_converted(
    client: diffusionmaster.Client, emulator: Emulator
) -> None:
    """A CMYK PIL image is converted to RGB before it is encoded as PNG."""
    client.upscale(PILImage.new("CMYK", (8, 8)), 2)
    (upload,) = _bodies(emulator, "newImageUpload")
    data = base64.b64decode(upload["imageBase64"].split(",", 1)[1])
    assert PILImage.open(io.BytesIO(data)).mode == "RGB"


def test_file_object_is_read_from_its_position(tmp_path: Path) -> None:
    """A file object is read from where it stands."""
    stream = io.BytesIO(b"junk" + PNG)
    stream.seek(4)
    assert _inputs.load("image", stream) == PNG


@pytest.mark.parametrize("kind", ["uuid string", "Image", "UploadedImage"])
def test_server_side_input_is_sent_by_reference(
    client: diffusionmaster.Client, emulator: Emulator, kind: str
) -> None:
    """A UUID string, an Image or an UploadedImage is sent by UUID, with no upload."""
    (made,) = client.text2img("a lake")
    value = {
        "uuid string": made.uuid,
        "Image": made,
        "UploadedImage": UploadedImage(made.uuid, made.url),
    }[kind]
    client.upscale(value, 3)
    (body,) = _bodies(emulator, "newUpscaleGan")
    assert body["imageUUID"] == made.uuid
    assert _keys(emulator) == ["newConnection", "newTask", "newUpscaleGan"]


def test_upload_image_of_a_server_side_input_sends_nothing(
    client: diffusionmaster.Client, emulator: Emulator
) -> None:
    """upload_image of an Image returns it as an UploadedImage without sending anything."""
    (made,) = client.text2img("a lake")
    assert client.upload_image(made) == UploadedImage(made.uuid, made.url)
    assert client.upload_image(made.uuid) == UploadedImage(made.uuid)
    uploaded = client.upload_image(PNG)
    assert client.upload_image(uploaded) is uploaded
    assert _keys(emulator) == ["newConnection", "newTask", "newImageUpload"]


def test_controlnet_guide_accepts_local_inputs(
    client: diffusionmaster.Client, emulator: Emulator, tmp_path: Path
) -> None:
    """A ControlNet guide image given as a path is uploaded and referenced by UUID."""
    client.text2img("x", controlnet=[diffusionmaster.ControlNet("canny", _write(tmp_path, PNG))])
    (upload,) = _bodies(emulator, "newImageUpload")
    (task,) = _bodies(emulator, "newTask")
    assert upload["imageBase64"].endswith(base64.b64encode(PNG).decode())
    assert task["controlNet"][0]["guideImageUUID"] == client.upload_image(PNG).uuid


# -- refused before anything is sent ----------------------------------------------------


def _text_file(tmp_path: Path) -> Any:
    return _write(tmp_path, PNG).open("r", encoding="latin-1")


BAD_INPUTS: dict[str, tuple[Callable[[Path], Any], str]] = {
    "missing file": (
        lambda tmp: tmp / "nope.png",
        r"image: cannot read image file '.*nope\.png': No such file or directory",
    ),
    "directory": (lambda tmp: tmp, r"image: cannot read image file '.*': Is a directory"),
    "GIF bytes": (
        lambda tmp: _encode("GIF"),
        r"image: the data is not a PNG, JPEG or WEBP image \(first bytes b'GIF87a",
    ),
    "GIF file": (
        lambda tmp: _write(tmp, _encode("GIF"), "x.gif"),
        r"image: file '.*x\.gif' is not a PNG, JPEG or WEBP image",
    ),
    "empty bytes": (lambda tmp: b"", r"image: the data is not a PNG, JPEG or WEBP image \(empty\)"),
    "text-mode file": (_text_file, r"image: file objects must be opened in binary mode"),
    "URL": (
        lambda tmp: "https://example.com/cat.png",
        r"image: image URLs are not accepted here",
    ),
    "int": (lambda tmp: 42, r"image: expected an image: a path, bytes, .*; got int"),
    "list": (lambda tmp: [PNG], r"image: expected an image: .*; got list"),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_is_refused_before_sending(
    client: diffusionmaster.Client, emulator: Emulator, tmp_path: Path, case: str
) -> None:
    """A missing, unreadable or unsupported input raises InvalidArgumentError; nothing is sent."""
    make, message = BAD_INPUTS[case]
    value = make(tmp_path)
    try:
        with pytest.raises(InvalidArgumentError, match=message) as info:
            client.upscale(value, 2)
    finally:
        if hasattr(value, "close"):
            value.close()
    assert isinstance(info.value, ValueError) and info.value.parameter == "image"
    assert _keys(emulator) == ["newConnection"]


def test_bad_second_input_does_not_upload_the_first(
    client: diffusionmaster.Client, emulator: Emulator, tmp_path: Path
) -> None:
    """When the mask is bad, the valid image is not uploaded either."""
    with pytest.raises(InvalidArgumentError, match=r"^mask: cannot read image file"):
        client.inpaint("x", PNG, tmp_path / "missing-mask.png")
    assert _keys(emulator) == ["newConnection"]


def test_bad_guide_image_does_not_upload_the_image(
    client: diffusionmaster.Client, emulator: Emulator
) -> None:
    """A bad ControlNet guide stops the call before the initial image is uploaded."""
    with pytest.raises(InvalidArgumentError, match=r"^controlnet\[0\]\.guide_image: the data"):
        client.img2img("x", PNG, controlnet=[diffusionmaster.ControlNet("canny", b"nope")])
    assert _keys(emulator) == ["newConnection"]


def test_uuid_string_is_not_read_as_a_path() -> None:
    """A UUID string names a server image even in upper case, and is kept as given."""
    value = "96EEEC33-8E74-4A9F-A06C-AE58ACBC3529"
    assert _inputs.load("image", value) == value


def test_result_input_keeps_its_uuid() -> None:
    """Image and UploadedImage inputs give their UUID without any I/O."""
    image = Image("11111111-2222-4333-8444-555555555555", url="http://127.0.0.1:9/never")
    assert _inputs.load("image", image) == image.uuid
    uploaded = UploadedImage("AAAAAAAA-2222-4333-8444-555555555555")
    assert _inputs.load("image", uploaded) == "AAAAAAAA-2222-4333-8444-555555555555"


NOT_UUIDS: dict[str, tuple[object, str]] = {
    "UploadedImage": (
        UploadedImage("u-1"),
        r"^image: UploadedImage\.uuid must be an image UUID \(8-4-4-4-12 hex digits\), "
        r"got 'u-1'$",
    ),
    "Image": (
        Image("../x", url="http://127.0.0.1:9/never"),
        r"^image: Image\.uuid must be an image UUID \(8-4-4-4-12 hex digits\), got '\.\./x'$",
    ),
    "braces": (
        "{11111111-2222-4333-8444-555555555555}",
        r"^image: '\{11111111-2222-4333-8444-555555555555\}' is not an image UUID in the "
        r"server's form \(8-4-4-4-12 hex digits\); pass '11111111-2222-4333-8444-555555555555'$",
    ),
    "no hyphens": (
        "11111111222243338444555555555555",
        r"^image: '11111111222243338444555555555555' is not an image UUID in the server's form "
        r"\(8-4-4-4-12 hex digits\); pass '11111111-2222-4333-8444-555555555555'$",
    ),
    "urn": (
        "urn:uuid:11111111-2222-4333-8444-555555555555",
        r"^image: 'urn:uuid:11111111-2222-4333-8444-555555555555' is not an image UUID in the "
        r"server's form",
    ),
    "one digit short": (
        "11111111-2222-4333-8444-55555555555",
        r"^image: '11111111-2222-4333-8444-55555555555' is neither an image UUID "
        r"\(8-4-4-4-12 hex digits\) nor a readable file$",
    ),
}


@pytest.mark.parametrize("case", sorted(NOT_UUIDS))
def test_an_image_uuid_that_is_not_a_uuid_is_refused_before_sending(
    client: diffusionmaster.Client, emulator: Emulator, case: str
) -> None:
    """A UUID string or a result's uuid not in the 8-4-4-4-12 form is InvalidArgumentError."""
    value, message = NOT_UUIDS[case]
    with pytest.raises(InvalidArgumentError, match=message) as info:
        client.upscale(value, 2)
    assert info.value.parameter == "image"
    assert _keys(emulator) == ["newConnection"]


def test_a_bad_guide_uuid_is_refused_before_sending(
    client: diffusionmaster.Client, emulator: Emulator
) -> None:
    """A ControlNet guide given as an UploadedImage with a non-UUID is refused, naming it."""
    guide = diffusionmaster.ControlNet("canny", UploadedImage("not-a-uuid"))
    with pytest.raises(InvalidArgumentError, match=r"^controlnet\[0\]\.guide_image: ") as info:
        client.text2img("x", controlnet=[guide])
    assert info.value.parameter == "controlnet[0].guide_image"
    assert _keys(emulator) == ["newConnection"]


def test_timeout_covers_uploads(client: diffusionmaster.Client, emulator: Emulator) -> None:
    """A call whose upload gets no answer ends with RequestTimeoutError naming the upload."""
    emulator.withhold_frames()
    with pytest.raises(diffusionmaster.RequestTimeoutError) as info:
        client.upscale(PNG, 2, timeout=seconds(0.2))
    (upload,) = _bodies(emulator, "newImageUpload")
    assert info.value.task_uuid == upload["taskUUID"]
