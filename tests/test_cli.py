"""The command line, run in-process (``main(argv)``) or as ``python -m diffusionmaster``
against a real emulator on 127.0.0.1."""

from __future__ import annotations

import base64
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

import diffusionmaster
from diffusionmaster import cli
from diffusionmaster.cli import EXIT_CODES, main
from diffusionmaster.testing import Emulator

from .conftest import API_KEY, run_on_a_terminal, seconds

SUBPROCESS_TIMEOUT = seconds(30)


def _run(emu: Emulator, *argv: str) -> int:
    """``main`` with the emulator's URL and key appended."""
    return main([*argv, "--url", emu.url, "--api-key", API_KEY])


def _frames(emu: Emulator, key: str) -> list[dict[str, Any]]:
    return [f[key] for f in emu.received_frames() if key in f]


def _jpeg(tmp_path: Path, emu: Emulator) -> Path:
    """A JPEG file made by the emulator."""
    with diffusionmaster.Client(API_KEY, url=emu.url) as client:
        (image,) = client.text2img("a source image")
        path = image.save(tmp_path / "source.jpg")
    emu.clear_received()
    return path


def _python(*argv: str, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "DIFFUSIONMASTER_API_KEY"}
    kwargs.setdefault("stdout", subprocess.PIPE)
    return subprocess.run(
        [sys.executable, "-m", "diffusionmaster", *argv],
        stderr=subprocess.PIPE,
        text=True,
        timeout=SUBPROCESS_TIMEOUT,
        env=env,
        check=False,
        **kwargs,
    )


# -- the commands ---------------------------------------------------------------------


def test_generate_saves_images_and_prints_their_paths(
    emulator: Emulator, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """generate -n 3 saves three JPEG files under -o and prints their paths."""
    assert _run(emulator, "generate", "a red fox", "-n", "3", "-o", str(tmp_path)) == 0
    printed = capsys.readouterr().out.splitlines()
    assert sorted(printed) == sorted(str(p) for p in tmp_path.glob("*.jpg"))
    assert len(printed) == 3
    assert all(Path(p).read_bytes().startswith(b"\xff\xd8") for p in printed)


def test_generate_sends_the_options(emulator: Emulator, tmp_path: Path) -> None:
    """--size, --model, --seed and --negative reach the wire as sizeId, modelId, seed and -no."""
    argv = ["generate", "a castle", "--size", "512x768", "--model", "4", "--seed", "7"]
    assert _run(emulator, *argv, "--negative", "fog", "-o", str(tmp_path)) == 0
    (task,) = _frames(emulator, "newTask")
    assert (task["promptText"], task["sizeId"], task["modelId"], task["seed"]) == (
        "a castle -no fog",
        2,
        4,
        7,
    )


def test_generate_json(
    emulator: Emulator, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--json prints one object whose images name their file, UUID and task UUID."""
    assert _run(emulator, "generate", "a boat", "-n", "2", "--json", "-o", str(tmp_path)) == 0
    images = json.loads(capsys.readouterr().out)["images"]
    (task,) = _frames(emulator, "newTask")
    assert [Path(i["path"]).name for i in images] == [f"{i['uuid']}.jpg" for i in images]
    assert {i["task_uuid"] for i in images} == {task["taskUUID"]}


def test_img2img_uploads_the_file(
    emulator: Emulator, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """img2img uploads the local file and sends taskType 2 with its UUID."""
    source = _jpeg(tmp_path, emulator)
    assert _run(emulator, "img2img", "at night", str(source), "-o", str(tmp_path / "o")) == 0
    (upload,) = _frames(emulator, "newImageUpload")
    (task,) = _frames(emulator, "newTask")
    assert upload["imageBase64"].startswith("data:image/jpeg;base64,")
    assert (task["taskType"], task["promptText"]) == (2, "at night")
    assert len(capsys.readouterr().out.splitlines()) == 1


def test_upscale(emulator: Emulator, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """upscale --factor 4 sends upscaleFactor 4 and saves one image."""
    source = _jpeg(tmp_path, emulator)
    assert _run(emulator, "upscale", str(source), "--factor", "4", "-o", str(tmp_path / "o")) == 0
    (request,) = _frames(emulator, "newUpscaleGan")
    assert request["upscaleFactor"] == 4
    assert [Path(p).parent for p in capsys.readouterr().out.splitlines()] == [tmp_path / "o"]


def test_remove_bg_saves_a_png(
    emulator: Emulator, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """remove-bg saves the cut-out as a PNG file."""
    source = _jpeg(tmp_path, emulator)
    assert _run(emulator, "remove-bg", str(source), "-o", str(tmp_path / "o")) == 0
    (path,) = capsys.readouterr().out.splitlines()
    assert Path(path).read_bytes().startswith(b"\x89PNG")


def test_caption_prints_the_text(
    emulator: Emulator, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """caption prints the server's caption of the image."""
    source = _jpeg(tmp_path, emulator)
    assert _run(emulator, "caption", str(source)) == 0
    assert capsys.readouterr().out == "an image of 512x512 pixels\n"


def test_enhance_prints_one_version_per_line(
    emulator: Emulator, capsys: pytest.CaptureFixture[str]
) -> None:
    """enhance --versions 3 prints three distinct prompts."""
    assert _run(emulator, "enhance", "a cat", "--versions", "3") == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(set(lines)) == 3
    assert all(line.startswith("a cat, ") for line in lines)


def test_upload_prints_the_uuid(
    emulator: Emulator, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """upload prints the UUID the server gave the image."""
    source = _jpeg(tmp_path, emulator)
    assert _run(emulator, "upload", str(source), "--json") == 0
    printed = json.loads(capsys.readouterr().out)
    assert emulator.image_count == 2  # the source and its upload
    assert printed["url"] == f"{emulator.http_url}/image/{printed['uuid']}.png"


def test_embedded_emulator_needs_no_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """--emulator generates images with no key and no server."""
    monkeypatch.delenv("DIFFUSIONMASTER_API_KEY", raising=False)
    assert main(["generate", "a tree", "-n", "2", "--emulator", "-o", str(tmp_path)]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 2


def test_options_before_the_command(emulator: Emulator, tmp_path: Path) -> None:
    """The common options may come before the command's name."""
    argv = ["--url", emulator.url, "--api-key", API_KEY, "generate", "x", "-o", str(tmp_path)]
    assert main(argv) == 0


def test_key_from_the_environment(
    emulator: Emulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without --api-key the key comes from DIFFUSIONMASTER_API_KEY."""
    monkeypatch.setenv("DIFFUSIONMASTER_API_KEY", API_KEY)
    assert main(["generate", "x", "--url", emulator.url, "-o", str(tmp_path)]) == 0


def test_demo_saves_images(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """demo saves the images under -o and prints their paths."""
    assert main(["demo", "-n", "2", "-o", str(tmp_path)]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert sorted(printed) == sorted(str(p) for p in tmp_path.glob("*.jpg"))
    assert len(printed) == 2


# -- failures: one line on stderr and an exit code ------------------------------------


def _one_error_line(capsys: pytest.CaptureFixture[str]) -> str:
    captured = capsys.readouterr()
    (line,) = captured.err.splitlines()
    assert line.startswith("diffusionmaster: error: ")
    return line.removeprefix("diffusionmaster: error: ")


def test_no_key(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """Without a key the command exits 2 and says where a key comes from."""
    monkeypatch.delenv("DIFFUSIONMASTER_API_KEY", raising=False)
    assert main(["generate", "x", "--url", "ws://127.0.0.1:9/v1/"]) == EXIT_CODES["usage"] == 2
    assert _one_error_line(capsys) == (
        "no API key: pass --api-key, set DIFFUSIONMASTER_API_KEY, or use --emulator"
    )


def test_refused_key(emulator: Emulator, capsys: pytest.CaptureFixture[str]) -> None:
    """A key the server refuses exits 3."""
    assert main(["generate", "x", "--url", emulator.url, "--api-key", "wrong"]) == 3
    assert _one_error_line(capsys) == (
        "authentication failed: the server refused the API key: Invalid API key"
    )


def test_invalid_argument_names_the_flag(
    emulator: Emulator, capsys: pytest.CaptureFixture[str]
) -> None:
    """An argument the client rejects exits 2, names the flag, and sends no task."""
    assert _run(emulator, "generate", "x", "--seed", "0") == 2
    assert _one_error_line(capsys) == "invalid argument --seed: must be an integer >= 1, got 0"
    assert _frames(emulator, "newTask") == []


def test_unparsable_argument(capsys: pytest.CaptureFixture[str]) -> None:
    """A value argparse cannot parse exits 2 with one line."""
    assert main(["generate", "x", "--size", "big"]) == 2
    assert _one_error_line(capsys) == (
        "argument --size: unsupported size 'big'; supported (width, height): 512x512, "
        "512x768, 512x1024, 768x512, 1024x512, 704x512, 896x512, 512x896, 512x704, "
        "1024x1024, 1344x768, 768x1344, 640x960, 960x640 (see diffusionmaster generate --help)"
    )


def test_missing_image_file(
    emulator: Emulator, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An image file that does not exist exits 2 and names IMAGE."""
    assert _run(emulator, "caption", str(tmp_path / "nope.png")) == 2
    assert _one_error_line(capsys).startswith("invalid argument IMAGE: cannot read image file ")


def test_connection_failure(capsys: pytest.CaptureFixture[str]) -> None:
    """A server that cannot be reached exits 4."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        url = f"ws://127.0.0.1:{s.getsockname()[1]}/v1/"  # bound, not listening: refused
        assert main(["generate", "x", "--url", url, "--api-key", API_KEY]) == 4
    assert _one_error_line(capsys).startswith(f"connection failed: cannot connect to {url}: ")


def test_timeout(emulator: Emulator, capsys: pytest.CaptureFixture[str]) -> None:
    """Results that do not arrive within --timeout exit 5."""
    emulator.withhold_frames()
    assert _run(emulator, "generate", "x", "--timeout", str(seconds(0.3))) == 5
    (task,) = _frames(emulator, "newTask")
    assert _one_error_line(capsys) == (
        f"timed out: task {task['taskUUID']}: 0 of 1 results arrived before the timeout"
    )


def test_task_error(emulator: Emulator, capsys: pytest.CaptureFixture[str]) -> None:
    """An error the server reports for the task exits 7."""
    emulator.fail_next_task(42, "no capacity")
    assert _run(emulator, "enhance", "x") == 7
    (task,) = _frames(emulator, "newPromptEnhance")
    assert _one_error_line(capsys) == (
        f"task failed: task {task['taskUUID']} failed (errorId 42): no capacity"
    )


def test_expired_session(
    emulator: Emulator, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A session the server forgot while the task waited exits 6."""
    emulator.withhold_frames()
    codes: list[int] = []
    runner = threading.Thread(
        target=lambda: codes.append(_run(emulator, "generate", "x", "-o", str(tmp_path)))
    )
    runner.start()
    assert emulator.wait_for(lambda: "newTask" in str(emulator.received_frames()), seconds(5))
    emulator.expire_sessions()
    runner.join(seconds(10))
    assert codes == [6]
    assert _one_error_line(capsys).startswith("session expired: the server no longer knows ")


def test_unwritable_output(
    emulator: Emulator, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An output folder that cannot be created exits 1 before anything is sent."""
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    assert _run(emulator, "generate", "x", "-o", str(blocker / "sub")) == 1
    assert _one_error_line(capsys).startswith(f"cannot create the output folder '{blocker}/sub': ")


# -- the program: python -m diffusionmaster, the emulator server, the progress bar -------


@pytest.mark.slow
def test_python_m_diffusionmaster_json() -> None:
    """``python -m diffusionmaster enhance --emulator --json`` prints JSON and exits 0."""
    result = _python("enhance", "a cat", "--versions", "2", "--emulator", "--json")
    assert (result.returncode, result.stderr) == (0, "")
    assert len(json.loads(result.stdout)["texts"]) == 2


@pytest.mark.slow
def test_expected_failure_prints_no_traceback() -> None:
    """A failure in the real program prints one line to stderr and no traceback."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        url = f"ws://127.0.0.1:{s.getsockname()[1]}/v1/"  # bound, not listening: refused
        result = _python("generate", "x", "--url", url, "--api-key", "k")
    assert result.returncode == 4
    assert result.stdout == ""
    assert len(result.stderr.splitlines()) == 1


@pytest.mark.slow
def test_emulator_command_prints_its_real_port() -> None:
    """``emulator --port 0`` prints the URL of the port it bound, which serves clients."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "diffusionmaster", "emulator", "--port", "0", "--api-key", "k"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()  # bounded by the finally below if it hangs
        url = first.split()[2]
        assert first == f"emulator on {url} (keys: k)\n"
        assert ":0/" not in url
        with diffusionmaster.Client("k", url=url, timeout=seconds(10)) as client:
            assert len(client.text2img("x", number_results=2)) == 2
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.communicate(timeout=SUBPROCESS_TIMEOUT)
        except subprocess.TimeoutExpired:  # pragma: no cover - reported by the assert
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0


@pytest.mark.slow
@pytest.mark.skipif(sys.platform == "win32", reason="needs a POSIX pseudo-terminal")
def test_progress_bar_on_a_terminal(tmp_path: Path) -> None:
    """Generating several images with stderr on a terminal draws a tqdm bar there."""
    pytest.importorskip("tqdm")
    code, err = run_on_a_terminal("generate", "x", "-n", "4", "--emulator", "-o", str(tmp_path))
    assert code == 0
    assert "4/4" in err


@pytest.mark.slow
def test_no_progress_bar_when_stderr_is_not_a_terminal(tmp_path: Path) -> None:
    """With stderr on a pipe, a successful run writes nothing to it."""
    result = _python("generate", "x", "-n", "4", "--emulator", "-o", str(tmp_path))
    assert (result.returncode, result.stderr) == (0, "")


@pytest.mark.slow
def test_vvv_logs_the_embedded_emulator(tmp_path: Path) -> None:
    """-vvv adds the embedded emulator's DEBUG records to the client's."""
    result = _python("generate", "x", "--emulator", "-vvv", "-o", str(tmp_path))
    assert result.returncode == 0
    assert " DEBUG diffusionmaster.testing.emulator: emulator listening on ws://" in result.stderr
    assert " DEBUG diffusionmaster.supervisor: sent text2img task " in result.stderr


@pytest.mark.slow
def test_vv_leaves_the_embedded_emulator_out(tmp_path: Path) -> None:
    """With --emulator, -vv logs the client's records and none of the emulator's."""
    result = _python("generate", "x", "--emulator", "-vv", "-o", str(tmp_path))
    loggers = {line.split()[3] for line in result.stderr.splitlines()}
    assert result.returncode == 0
    assert "diffusionmaster.supervisor:" in loggers
    assert sorted(name for name in loggers if name.startswith("diffusionmaster.testing")) == []


@pytest.mark.slow
def test_help_lists_the_exit_codes() -> None:
    """--help exits 0 and ends with a table that has one row per exit code."""
    result = _python("--help")
    assert result.returncode == 0
    table = result.stdout.split("exit codes:\n")[1]
    rows = [line.split()[0] for line in table.splitlines() if not line.startswith("     ")]
    assert rows == [str(code) for code in EXIT_CODES.values()]
    assert "  3    the server refused the API key\n" in table


def test_version_prints_the_version(capsys: pytest.CaptureFixture[str]) -> None:
    """--version prints the package version and exits 0."""
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"diffusionmaster {diffusionmaster.__version__}"


def test_the_url_variable_is_read_after_url(
    emulator: Emulator, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without --url, the CLI (through Client) connects to DIFFUSIONMASTER_URL."""
    monkeypatch.setenv("DIFFUSIONMASTER_URL", emulator.url)
    assert main(["enhance", "a castle", "--api-key", API_KEY]) == 0
    assert [f for f in emulator.received_frames() if "newPromptEnhance" in f]
    assert capsys.readouterr().out.strip()


# -- the options of the library (issue 13) ---------------------------------------------


def test_generate_sends_the_tuning_options(emulator: Emulator, tmp_path: Path) -> None:
    """--steps, --guidance, --scheduler, --style, --model NAME, --size and --return-base64
    reach the wire as steps, gScale, schedulerId, styleId, modelId, sizeId, returnBase64Image."""
    argv = ["generate", "a castle", "--steps", "30", "--guidance", "8.5", "--scheduler"]
    argv += ["DPMPP_2M_KARRAS", "--style", "anime", "--model", "SDXL_V1_0", "--size", "1024x1024"]
    assert _run(emulator, *argv, "--return-base64", "-o", str(tmp_path)) == 0
    (task,) = _frames(emulator, "newTask")
    sent = {key: task[key] for key in ("steps", "gScale", "schedulerId", "styleId", "modelId")}
    assert sent == {"steps": 30, "gScale": 8.5, "schedulerId": 22, "styleId": 2, "modelId": 4}
    assert (task["sizeId"], task["returnBase64Image"]) == (11, True)


def test_ids_work_as_well_as_names(emulator: Emulator, tmp_path: Path) -> None:
    """--model, --size, --scheduler and --style also take the table's ids."""
    argv = ["generate", "x", "--model", "20", "--size", "21", "--scheduler", "2", "--style", "12"]
    assert _run(emulator, *argv, "-o", str(tmp_path)) == 0
    (task,) = _frames(emulator, "newTask")
    assert (task["modelId"], task["sizeId"], task["schedulerId"], task["styleId"]) == (
        20,
        21,
        2,
        12,
    )


def test_lora_is_repeatable_with_an_optional_weight(emulator: Emulator, tmp_path: Path) -> None:
    """Each --lora MODEL[:WEIGHT] becomes one lora item; the weight defaults to 1."""
    argv = ["generate", "x", "--lora", "civitai:132942@146296:0.7", "--lora", "civitai:1@2"]
    assert _run(emulator, *argv, "-o", str(tmp_path)) == 0
    (task,) = _frames(emulator, "newTask")
    assert task["lora"] == [
        {"modelId": "civitai:132942@146296", "weight": 0.7},
        {"modelId": "civitai:1@2", "weight": 1.0},
    ]


def test_bad_lora_is_a_usage_error(emulator: Emulator, capsys: pytest.CaptureFixture[str]) -> None:
    """A --lora weight above 1 exits 2 with one line and sends nothing."""
    assert _run(emulator, "generate", "x", "--lora", "civitai:1@2:1.5") == 2
    assert _one_error_line(capsys) == (
        "argument --lora: weight: must be a number from 0 to 1, got 1.5 "
        "(see diffusionmaster generate --help)"
    )
    assert emulator.received_frames() == []


def test_controlnet_uploads_the_guide(emulator: Emulator, tmp_path: Path) -> None:
    """--controlnet canny:FILE:0.6 uploads FILE and sends a taskType 9 guided by it (the
    emulator refuses a guideImageUUID it does not hold)."""
    guide = _jpeg(tmp_path, emulator)
    argv = ["generate", "x", "--controlnet", f"canny:{guide}:0.6", "-o", str(tmp_path / "o")]
    assert _run(emulator, *argv) == 0
    assert len(_frames(emulator, "newImageUpload")) == 1
    (task,) = _frames(emulator, "newTask")
    (item,) = task["controlNet"]
    assert task["taskType"] == 9
    assert (item["preprocessor"], item["weight"]) == ("canny", 0.6)


def test_controlnet_on_img2img_is_task_type_10(emulator: Emulator, tmp_path: Path) -> None:
    """img2img with --controlnet sends taskType 10 with both images."""
    source = _jpeg(tmp_path, emulator)
    argv = ["img2img", "x", str(source), "--controlnet", f"depth_midas:{source}"]
    assert _run(emulator, *argv, "-o", str(tmp_path / "o")) == 0
    (task,) = _frames(emulator, "newTask")
    (item,) = task["controlNet"]
    assert task["taskType"] == 10
    assert (item["preprocessor"], item["weight"]) == ("depth_midas", 1.0)
    assert item["guideImageUUID"] == task["imageInitiatorUUID"]  # the same bytes, uploaded once


def test_controlnet_without_an_image_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    """--controlnet without PREPROCESSOR:IMAGE exits 2 and shows the expected form."""
    assert main(["generate", "x", "--controlnet", "canny"]) == 2
    assert _one_error_line(capsys) == (
        "argument --controlnet: expected PREPROCESSOR:IMAGE[:WEIGHT] such as "
        "canny:edges.png:0.8, got 'canny' (see diffusionmaster generate --help)"
    )


def test_controlnet_preprocessor_is_checked_by_the_library(
    emulator: Emulator, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A preprocessor SDXL does not take exits 2, naming --controlnet[0], before sending."""
    guide = _jpeg(tmp_path, emulator)
    argv = ["generate", "x", "--model", "SDXL_V1_0", "--controlnet", f"openpose:{guide}"]
    assert _run(emulator, *argv) == 2
    assert _one_error_line(capsys).startswith(
        "invalid argument --controlnet[0].preprocessor: 'openpose' is not available for SDXL "
        "models; SDXL takes canny, depth_leres, "
    )
    assert (_frames(emulator, "newImageUpload"), _frames(emulator, "newTask")) == ([], [])


def test_inpaint_uploads_image_and_mask(
    emulator: Emulator, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """inpaint PROMPT IMAGE MASK uploads both files and sends taskType 3 with their UUIDs."""
    image = _jpeg(tmp_path, emulator)
    with diffusionmaster.Client(API_KEY, url=emulator.url) as client:
        (mask_image,) = client.text2img("a mask", seed=5)
        mask = mask_image.save(tmp_path / "mask.jpg")
    emulator.clear_received()
    assert (
        _run(emulator, "inpaint", "a door", str(image), str(mask), "-o", str(tmp_path / "o")) == 0
    )
    assert len(_frames(emulator, "newImageUpload")) == 2
    (task,) = _frames(emulator, "newTask")
    assert task["taskType"] == 3
    assert task["imageInitiatorUUID"] != task["imageMaskInitiatorUUID"]
    assert len(capsys.readouterr().out.splitlines()) == 1


def test_preprocess_saves_the_guide(
    emulator: Emulator, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """preprocess IMAGE canny --low-threshold/--high-threshold sends them and saves the guide."""
    source = _jpeg(tmp_path, emulator)
    argv = ["preprocess", str(source), "canny", "--low-threshold", "100", "--high-threshold"]
    assert _run(emulator, *argv, "200", "--json", "-o", str(tmp_path / "o")) == 0
    (request,) = _frames(emulator, "newPreProcessControlNet")
    (record,) = json.loads(capsys.readouterr().out)["images"]
    sent = (
        request["preProcessorType"],
        request["lowThresholdCanny"],
        request["highThresholdCanny"],
    )
    assert sent == ("canny", 100, 200)
    assert Path(record["path"]).parent == tmp_path / "o"
    assert Path(record["path"]).stem == record["uuid"]


def test_preprocess_output_guides_generate(
    emulator: Emulator, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The UUID preprocess prints is accepted by generate --controlnet as the guide image."""
    source = _jpeg(tmp_path, emulator)
    assert _run(emulator, "preprocess", str(source), "canny", "--json", "-o", str(tmp_path)) == 0
    (record,) = json.loads(capsys.readouterr().out)["images"]
    emulator.clear_received()
    argv = ["generate", "x", "--controlnet", f"canny:{record['uuid']}", "-o", str(tmp_path)]
    assert _run(emulator, *argv) == 0
    (task,) = _frames(emulator, "newTask")
    assert task["controlNet"][0]["guideImageUUID"] == record["uuid"]
    assert _frames(emulator, "newImageUpload") == []


@pytest.mark.slow
def test_help_shows_the_defaults() -> None:
    """generate --help shows the library's defaults of the options."""
    result = _python("generate", "--help")
    text = " ".join(result.stdout.split())
    assert result.returncode == 0
    for shown in (
        "how many images (default: 1)",
        "or a sizeId (default: 512x512)",
        "(default: REV_ANIMATED_V1_2_2, id 13)",
        "inference steps, 1 to 1000 (default: the server's, 20)",
        "guidance scale, 0 to 10 (default: the server's, 7.5)",
        "--timeout SECONDS deadline of the request (default: 120)",
        "output folder (default: .)",
    ):
        assert shown in text


# -- the promises of issue 10: one line, the documented exit code ----------------------


def test_malformed_url_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    """A --url that is not ws:// or wss:// exits 2 with one line, before connecting."""
    assert main(["generate", "x", "--url", "localhost:8765", "--api-key", API_KEY]) == 2
    assert _one_error_line(capsys) == (
        "invalid argument --url: must start with ws:// or wss://, got 'localhost:8765'"
    )


def test_json_failure_prints_an_error_object(
    emulator: Emulator, capsys: pytest.CaptureFixture[str]
) -> None:
    """With --json a task error prints an error object on stdout as well as the stderr line."""
    emulator.fail_next_task(42, "no capacity")
    assert _run(emulator, "enhance", "x", "--json") == 7
    (task,) = _frames(emulator, "newPromptEnhance")
    captured = capsys.readouterr()
    message = f"task failed: task {task['taskUUID']} failed (errorId 42): no capacity"
    assert json.loads(captured.out) == {
        "error": {
            "exit_code": 7,
            "kind": "task",
            "message": message,
            "type": "TaskError",
            "task_uuid": task["taskUUID"],
            "error_id": 42,
        }
    }
    assert captured.err == f"diffusionmaster: error: {message}\n"


def test_json_usage_error_prints_an_error_object(capsys: pytest.CaptureFixture[str]) -> None:
    """With --json a command line argparse refuses still prints an error object on stdout."""
    assert main(["generate", "x", "--json", "--size", "1x1"]) == 2
    error = json.loads(capsys.readouterr().out)["error"]
    assert (error["exit_code"], error["kind"]) == (2, "usage")
    assert error["message"].startswith("argument --size: unsupported size '1x1'; supported")


def test_json_invalid_argument_names_the_flag(
    emulator: Emulator, capsys: pytest.CaptureFixture[str]
) -> None:
    """With --json an argument the library refuses is reported with its flag."""
    assert _run(emulator, "generate", "x", "--steps", "0", "--json") == 2
    error = json.loads(capsys.readouterr().out)["error"]
    assert error == {
        "exit_code": 2,
        "kind": "usage",
        "message": "invalid argument --steps: must be an integer from 1 to 1000, got 0",
        "type": "InvalidArgumentError",
        "parameter": "--steps",
    }


@pytest.mark.slow
def test_emulator_on_a_busy_port() -> None:
    """``emulator --port P`` with P taken exits 1 with one line and no traceback."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = _python("emulator", "--port", str(port))
    assert (result.returncode, result.stdout) == (EXIT_CODES["failure"], "")
    assert result.stderr == (
        f"diffusionmaster: error: cannot listen on 127.0.0.1:{port}: Address already in use\n"
    )


@pytest.mark.slow
def test_closed_output_pipe(emulator: Emulator, tmp_path: Path) -> None:
    """Printing into a pipe nobody reads (``| head`` gone) exits 141 and prints nothing."""
    reader, writer = os.pipe()
    os.close(reader)  # closed before the program writes: its first path finds no reader
    try:
        argv = ["generate", "x", "-n", "3", "--url", emulator.url, "--api-key", API_KEY]
        result = _python(*argv, "-o", str(tmp_path), stdout=writer)
    finally:
        os.close(writer)
    assert (result.returncode, result.stderr) == (141, "")


def test_demo_says_its_images_are_placeholders(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """demo tells on stderr that its images come from the emulator and how to go live."""
    assert main(["demo", "-n", "1", "-o", str(tmp_path)]) == 0
    assert capsys.readouterr().err == (
        "These images are placeholders drawn by a local emulator: nothing was sent to "
        "DiffusionMaster and nothing was billed. To generate real images, set your API key "
        '(export DIFFUSIONMASTER_API_KEY=...) and run: diffusionmaster generate "a prompt"\n'
    )


SECRET_KEY = "sk-live-4f9c2b7e1d"


def _verbose_run(emulator: Emulator, tmp_path: Path, *flags: str) -> tuple[str, list[str]]:
    """Run ``generate -n 2`` with ``flags`` in a real process; return its stderr and the
    ends of the saved images' base64 (what must never be logged)."""
    emulator.add_key(SECRET_KEY)
    argv = ["generate", "x", "-n", "2", *flags, "--url", emulator.url]
    result = _python(*argv, "--api-key", SECRET_KEY, "-o", str(tmp_path))
    assert result.returncode == 0
    payloads = [base64.b64encode(p.read_bytes()).decode()[-60:] for p in tmp_path.glob("*.jpg")]
    assert len(payloads) == 2
    return result.stderr, payloads


def test_v_logs_connect_and_session_at_info(emulator: Emulator, tmp_path: Path) -> None:
    """-v logs connecting and the session at INFO, and nothing at DEBUG."""
    err, _ = _verbose_run(emulator, tmp_path, "-v")
    (session,) = emulator.session_uuids()
    messages = [line.split(" ", 2)[2] for line in err.splitlines()]
    assert messages == [
        f"INFO diffusionmaster.supervisor: connecting to {emulator.url}",
        f"INFO diffusionmaster.supervisor: connected to {emulator.url}, session {session}",
    ]


def test_vv_logs_each_task_sent_and_completed(emulator: Emulator, tmp_path: Path) -> None:
    """-vv logs the task sent (kind, uuid, count) and completed (count, time) at DEBUG."""
    err, _ = _verbose_run(emulator, tmp_path, "-vv")
    (task,) = _frames(emulator, "newTask")
    uuid = task["taskUUID"]
    debug = [line.split(" ", 3)[3] for line in err.splitlines() if " DEBUG " in line]
    assert f"diffusionmaster.supervisor: sent text2img task {uuid}: 2 result(s) expected" in debug
    (completed,) = [line for line in debug if line.startswith("diffusionmaster.supervisor: com")]
    prefix = f"diffusionmaster.supervisor: completed text2img task {uuid}: 2 item(s) in "
    assert completed.startswith(prefix)
    assert completed.endswith(" s")
    assert float(completed.removeprefix(prefix).removesuffix(" s")) >= 0


def test_vv_never_logs_the_key_or_base64(emulator: Emulator, tmp_path: Path) -> None:
    """-vv output holds neither the API key nor any image's base64 data."""
    err, payloads = _verbose_run(emulator, tmp_path, "-vv", "--return-base64")
    assert " DEBUG " in err
    assert SECRET_KEY not in err
    assert [p for p in payloads if p in err] == []


class _Resumed(logging.Handler):
    """Sets an event when the supervisor logs that a session was resumed."""

    def __init__(self) -> None:
        super().__init__()
        self.event = threading.Event()

    def emit(self, record: logging.LogRecord) -> None:
        if record.getMessage().endswith(" resumed"):
            self.event.set()


def test_v_logs_a_resume(
    emulator: Emulator, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """-v logs at INFO that the session was resumed after a dropped connection."""
    emulator.withhold_frames()
    resumed = _Resumed()
    logging.getLogger("diffusionmaster.supervisor").addHandler(resumed)
    codes: list[int] = []
    runner = threading.Thread(
        target=lambda: codes.append(_run(emulator, "generate", "x", "-v", "-o", str(tmp_path)))
    )
    runner.start()
    try:
        assert emulator.wait_for(lambda: bool(_frames(emulator, "newTask")), seconds(5))
        emulator.drop_connections()
        # The result is held until the resume is logged: the command is still running then.
        assert resumed.event.wait(seconds(10))
    finally:
        emulator.release_frames()
        runner.join(seconds(10))
        logging.getLogger("diffusionmaster.supervisor").removeHandler(resumed)
    assert codes == [0]
    (session,) = emulator.session_uuids()
    assert f" INFO diffusionmaster.supervisor: session {session} resumed\n" in (
        capsys.readouterr().err
    )


def test_readme_lists_every_exit_code() -> None:
    """The README's exit code table has one row per code of EXIT_CODES, in order."""
    readme = (Path(__file__).parent.parent / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Command line\n")[1].split("\n## ")[0]
    table = section.split("| code | meaning |\n|---|---|\n")[1].split("\n\n")[0]
    assert [row.split("|")[1].strip() for row in table.splitlines()] == [
        str(code) for code in EXIT_CODES.values()
    ]


@pytest.mark.parametrize(
    ("text", "preprocessor", "guide", "weight"),
    [
        ("canny:edges.png", "canny", "edges.png", 1.0),
        ("canny:edges.png:0.8", "canny", "edges.png", 0.8),
        ("depth_midas:https://example.org:8080/a.png", "depth_midas", "https://example.org:8080/a.png", 1.0),
        ("openpose:https://example.org/a.png:0.5", "openpose", "https://example.org/a.png", 0.5),
    ],
)  # fmt: skip
def test_controlnet_argument_keeps_the_colons_of_urls(
    text: str, preprocessor: str, guide: str, weight: float
) -> None:
    """PREPROCESSOR:IMAGE[:WEIGHT] splits the preprocessor off the front and a number off
    the end, leaving a URL's own colons in the image."""
    assert cli._controlnet(text) == diffusionmaster.ControlNet(preprocessor, guide, weight)
