"""The ``batch`` command end to end: a task file run against a real emulator on
127.0.0.1, in-process (``main(argv)``) and as ``python -m diffusionmaster``,
including runs interrupted (SIGINT, SIGKILL) and resumed."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import urllib.request
from collections import Counter
from pathlib import Path
from typing import IO, Any

import pytest

from diffusionmaster import ControlNet, Lora
from diffusionmaster._taskfile import TaskFileError
from diffusionmaster.batchrun import EXIT_CODES, MANIFEST, read_manifest, read_tasks
from diffusionmaster.cli import main
from diffusionmaster.testing import Emulator

from .conftest import API_KEY, run_on_a_terminal, seconds

SUBPROCESS_TIMEOUT = seconds(60)


def _write_tasks(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def _prompts(n: int) -> list[dict[str, Any]]:
    """``n`` tasks with ids ``t0``... and the distinct prompts ``prompt 0``..."""
    return [{"id": f"t{i}", "prompt": f"prompt {i}"} for i in range(n)]


def _batch(emu: Emulator, tasks: Path, out: Path, *argv: str) -> int:
    return main(
        ["batch", str(tasks), "-o", str(out), *argv, "--url", emu.url, "--api-key", API_KEY]
    )


def _sent(emu: Emulator) -> list[dict[str, Any]]:
    """The newTask requests the emulator received, in order."""
    return [f["newTask"] for f in emu.received_frames() if "newTask" in f]


def _sent_prompts(emu: Emulator) -> list[str]:
    return [task["promptText"] for task in _sent(emu)]


def _manifest(out: Path) -> list[dict[str, Any]]:
    """Every readable line of the manifest, in order."""
    lines = (out / MANIFEST).read_text(encoding="utf-8").splitlines()
    records = []
    for line in lines:
        with contextlib.suppress(ValueError):  # a line cut short by SIGKILL
            records.append(json.loads(line))
    return records


def _final(out: Path) -> dict[str, dict[str, Any]]:
    """The last manifest record of each id (the one that counts)."""
    return {record["id"]: record for record in _manifest(out)}


# -- a run ---------------------------------------------------------------------------


def test_every_task_is_saved_and_recorded(
    emulator: Emulator, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Each task gets a received line when its results arrive, then a done line with its
    task UUID, image UUIDs, URLs, paths (<id>-<n>.jpg) and cost once they are saved."""
    tasks = _write_tasks(
        tmp_path / "tasks.jsonl",
        [{"id": "fox", "prompt": "a fox"}, {"id": "owl", "prompt": "an owl", "number_results": 2}],
    )
    out = tmp_path / "out"
    assert _batch(emulator, tasks, out) == 0
    sent = {task["promptText"]: task["taskUUID"] for task in _sent(emulator)}
    lines = [(r["id"], r["status"]) for r in _manifest(out)]
    assert sorted(lines) == [
        ("fox", "done"),
        ("fox", "received"),
        ("owl", "done"),
        ("owl", "received"),
    ]
    assert lines.index(("fox", "received")) < lines.index(("fox", "done"))
    assert lines.index(("owl", "received")) < lines.index(("owl", "done"))
    records = _final(out)
    for task_id, prompt, count in (("fox", "a fox", 1), ("owl", "an owl", 2)):
        record = records[task_id]
        assert (record["status"], record["error"], record["task_uuid"]) == (
            "done",
            None,
            sent[prompt],
        )
        paths = [image["path"] for image in record["images"]]
        assert paths == [str(out / f"{task_id}-{n}.jpg") for n in range(1, count + 1)]
        assert all(Path(p).read_bytes().startswith(b"\xff\xd8") for p in paths)
        assert [image["url"] for image in record["images"]] == [
            f"{emulator.http_url}/image/{image['uuid']}.jpg" for image in record["images"]
        ]
        assert record["cost"] == pytest.approx(0.0013 * count)
    printed = capsys.readouterr().out.splitlines()
    assert sorted(printed) == sorted(str(p) for p in out.glob("*.jpg"))


def test_the_options_of_a_line_reach_the_wire(emulator: Emulator, tmp_path: Path) -> None:
    """A line's size ("WxH"), model name, seed, steps and negative prompt become sizeId,
    modelId, seed, steps and the -no convention."""
    row = {"prompt": "a castle", "size": "512x768", "model": "SDXL_V1_0", "seed": 7}
    tasks = _write_tasks(tmp_path / "t.jsonl", [{**row, "steps": 30, "negative_prompt": "fog"}])
    assert _batch(emulator, tasks, tmp_path / "out") == 0
    (task,) = _sent(emulator)
    assert (task["promptText"], task["sizeId"], task["modelId"], task["seed"], task["steps"]) == (
        "a castle -no fog",
        2,
        4,
        7,
        30,
    )


def test_a_second_run_sends_nothing(
    emulator: Emulator, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Running the same command again skips every task the manifest records as done."""
    tasks = _write_tasks(tmp_path / "t.jsonl", _prompts(3))
    assert _batch(emulator, tasks, tmp_path / "out") == 0
    emulator.clear_received()
    capsys.readouterr()
    assert _batch(emulator, tasks, tmp_path / "out") == 0
    assert _sent(emulator) == []
    assert "0 done, 3 already done" in capsys.readouterr().err


def test_only_tasks_missing_from_the_manifest_are_sent(emulator: Emulator, tmp_path: Path) -> None:
    """Tasks added to the file (and tasks without an id, by content) run; recorded ones do not."""
    first = [*_prompts(2), {"prompt": "no id"}]
    assert _batch(emulator, _write_tasks(tmp_path / "t.jsonl", first), tmp_path / "out") == 0
    emulator.clear_received()
    more = [{"prompt": "new, first line"}, *first, {"id": "t9", "prompt": "prompt 9"}]
    assert _batch(emulator, _write_tasks(tmp_path / "t.jsonl", more), tmp_path / "out") == 0
    assert sorted(_sent_prompts(emulator)) == ["new, first line", "prompt 9"]


def test_ids_never_place_files_outside_the_folder(emulator: Emulator, tmp_path: Path) -> None:
    """Ids with separators, dots or clashing names become distinct safe file names inside -o."""
    ids = ["../../escape", "a/b", "a_b", "A_B", "..", "x" * 300, "plain-id"]
    rows = [{"id": task_id, "prompt": f"p{i}"} for i, task_id in enumerate(ids)]
    out = tmp_path / "deep" / "out"
    assert _batch(emulator, _write_tasks(tmp_path / "t.jsonl", rows), out) == 0
    files = sorted(p.name for p in out.iterdir() if p.name != MANIFEST)
    assert len(files) == len({f.casefold() for f in files}) == 7
    assert {p.parent for p in out.iterdir()} == {out}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["deep", "t.jsonl"]
    assert all(re.fullmatch(r"[A-Za-z0-9_-]{1,100}-1\.jpg", f) for f in files)
    assert "plain-id-1.jpg" in files  # a safe, unique id keeps its own name


def test_max_in_flight_bounds_the_tasks_on_the_wire(emulator: Emulator, tmp_path: Path) -> None:
    """With --max-in-flight 3 and every result held back, three tasks are sent and no
    fourth, until results arrive."""
    tasks = _write_tasks(tmp_path / "t.jsonl", _prompts(8))
    emulator.withhold_frames()
    codes: list[int] = []
    runner = threading.Thread(
        target=lambda: codes.append(
            _batch(emulator, tasks, tmp_path / "out", "--max-in-flight", "3")
        )
    )
    runner.start()
    try:
        assert emulator.wait_for(lambda: len(_sent(emulator)) >= 3, seconds(10))
        assert not emulator.wait_for(lambda: len(_sent(emulator)) > 3, seconds(0.5))
    finally:
        emulator.release_frames()
        runner.join(seconds(30))
    assert codes == [0]
    assert sorted(_sent_prompts(emulator)) == sorted(f"prompt {i}" for i in range(8))


def test_json_prints_a_summary_object(
    emulator: Emulator, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--json prints one summary object with the counts, the cost and the manifest path."""
    tasks = _write_tasks(tmp_path / "t.jsonl", _prompts(3))
    assert _batch(emulator, tasks, tmp_path / "out", "--max-in-flight", "1") == 0
    emulator.clear_received()
    capsys.readouterr()
    more = _write_tasks(tmp_path / "t.jsonl", [*_prompts(3), {"prompt": "x", "number_results": 2}])
    assert _batch(emulator, more, tmp_path / "out", "--json") == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary == {
        "total": 4,
        "done": 1,
        "already_done": 3,
        "failed": 0,
        "session_expired": 0,
        "failed_earlier": 0,
        "not_sent": 0,
        "images": 2,
        "cost": 0.0026,
        "stopped": None,
        "failures": [],
        "manifest": str(tmp_path / "out" / MANIFEST),
    }


def test_results_received_but_not_saved_are_downloaded_not_sent_again(
    emulator: Emulator, tmp_path: Path
) -> None:
    """A task whose last line says received (the process died before its images were
    saved) is not sent again: the next run downloads its images from the recorded URLs."""
    tasks = _write_tasks(tmp_path / "t.jsonl", _prompts(3))
    out = tmp_path / "out"
    assert _batch(emulator, tasks, out) == 0
    lines = (out / MANIFEST).read_text(encoding="utf-8").splitlines()
    received = [line for line in lines if json.loads(line)["status"] == "received"]
    (out / MANIFEST).write_text("\n".join(received) + "\n", encoding="utf-8")
    for image in out.glob("*.jpg"):
        image.unlink()
    emulator.clear_received()
    assert _batch(emulator, tasks, out) == 0
    assert _sent(emulator) == []
    final = _final(out)
    assert {task_id: r["status"] for task_id, r in final.items()} == dict.fromkeys(
        ("t0", "t1", "t2"), "done"
    )
    for task_id, record in final.items():
        (image,) = record["images"]
        assert image["path"] == str(out / f"{task_id}-1.jpg")
        with urllib.request.urlopen(image["url"], timeout=seconds(10)) as response:
            assert Path(image["path"]).read_bytes() == response.read()


def test_images_that_cannot_be_written_stay_received_and_are_saved_by_the_next_run(
    emulator: Emulator, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """When an image file cannot be written the run stops (exit 1) with the task recorded
    as received; the next run saves its images without sending it again."""
    tasks = _write_tasks(tmp_path / "t.jsonl", _prompts(1))
    out = tmp_path / "out"
    (out / "t0-1.jpg").mkdir(parents=True)  # in the way of the image file
    assert _batch(emulator, tasks, out) == EXIT_CODES["failure"] == 1
    first, record = _manifest(out)
    assert (first["status"], first["error"]) == ("received", None)
    assert (record["status"], record["error"]["type"]) == ("received", "CommandError")
    assert "task 't0' (line 1) images not saved: cannot write into" in capsys.readouterr().err
    (out / "t0-1.jpg").rmdir()
    emulator.clear_received()
    assert _batch(emulator, tasks, out) == 0
    assert _sent(emulator) == []
    assert _final(out)["t0"]["images"][0]["path"] == str(out / "t0-1.jpg")
    assert (out / "t0-1.jpg").read_bytes().startswith(b"\xff\xd8")


@pytest.mark.skipif(sys.platform == "win32", reason="the manifest lock is POSIX flock")
def test_a_run_on_a_folder_another_run_holds_is_refused(
    emulator: Emulator, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """While another process holds the manifest's lock, a run exits 1 and sends nothing."""
    tasks = _write_tasks(tmp_path / "t.jsonl", _prompts(2))
    out = tmp_path / "out"
    out.mkdir()
    with (out / MANIFEST).open("a") as held:
        fcntl.flock(held.fileno(), fcntl.LOCK_EX)
        assert _batch(emulator, tasks, out) == EXIT_CODES["failure"] == 1
    assert capsys.readouterr().err == (
        f"diffusionmaster: error: another batch is running on {str(out)!r} "
        "(its manifest is locked)\n"
    )
    assert emulator.connections_opened == 0
    assert _batch(emulator, tasks, out) == 0  # the lock is free again


# -- bad input -----------------------------------------------------------------------


def test_bad_lines_are_listed_and_nothing_is_sent(
    emulator: Emulator, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Every bad line is reported with its line number, the exit code is 2, and no
    connection is made."""
    tasks = tmp_path / "t.jsonl"
    tasks.write_text(
        '{"prompt": "fine"}\n'
        "\n"
        '{"prompt": "x", "size": "13x7"}\n'
        "not json\n"
        '{"prompt": "x", "colour": "red"}\n'
        '{"id": "a", "prompt": "x", "steps": 0}\n'
        '{"id": "b", "prompt": "x"}\n'
        '{"id": "b", "prompt": "y"}\n'
        '["prompt"]\n'
        '{"prompt": ""}\n',
        encoding="utf-8",
    )
    assert _batch(emulator, tasks, tmp_path / "out") == EXIT_CODES["usage"] == 2
    err = capsys.readouterr().err.splitlines()
    assert [line.split(": ", 2)[1] for line in err[:-1]] == [
        f"{tasks}:{n}" for n in (3, 4, 5, 6, 8, 9, 10)
    ]
    assert "size: unsupported size '13x7'" in err[0]
    assert "unknown option(s) ['colour']" in err[2]
    assert "steps: must be an integer from 1 to 1000, got 0" in err[3]
    assert "id 'b' is already used on line 7" in err[4]
    assert err[-1] == "diffusionmaster: error: 7 bad task line(s); nothing was sent"
    assert emulator.connections_opened == 0
    assert not (tmp_path / "out").exists()


def test_csv_tasks(emulator: Emulator, tmp_path: Path) -> None:
    """A .csv file with a header row: cells become integers, booleans, sizes and models;
    empty cells are absent."""
    tasks = tmp_path / "t.csv"
    tasks.write_text(
        "id,prompt,size,seed,check_nsfw,model\n"
        'a,"a fox, at dawn",512x768,7,true,SDXL_V1_0\n'
        "b,an owl,,,,\n",
        encoding="utf-8",
    )
    out = tmp_path / "out"
    assert _batch(emulator, tasks, out) == 0
    by_prompt = {task["promptText"]: task for task in _sent(emulator)}
    fox, owl = by_prompt["a fox, at dawn"], by_prompt["an owl"]
    assert (fox["sizeId"], fox["seed"], fox["checkNsfw"], fox["modelId"]) == (2, 7, True, 4)
    assert ("seed" in owl, "checkNsfw" in owl, owl["sizeId"]) == (False, False, 1)
    assert {task_id: r["status"] for task_id, r in _final(out).items()} == {
        "a": "done",
        "b": "done",
    }


def test_csv_bad_cells_are_reported_with_their_line(
    emulator: Emulator, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A CSV cell that fails a check is reported with its line number; nothing is sent."""
    tasks = tmp_path / "t.csv"
    tasks.write_text("prompt,check_nsfw\nfine,false\nbad,maybe\n", encoding="utf-8")
    assert _batch(emulator, tasks, tmp_path / "out") == 2
    first = capsys.readouterr().err.splitlines()[0]
    assert first == (f"diffusionmaster: {tasks}:3: check_nsfw: must be True or False, got 'maybe'")
    assert emulator.connections_opened == 0


def test_ids_without_an_id_are_stable_when_other_lines_change(tmp_path: Path) -> None:
    """A line without an id gets an id from its content, and repeats get -2, -3."""
    one = read_tasks(_write_tasks(tmp_path / "a.jsonl", [{"prompt": "x"}, {"prompt": "x"}]))
    two = read_tasks(
        _write_tasks(tmp_path / "b.jsonl", [{"prompt": "y"}, {"prompt": "x"}, {"prompt": "x"}])
    )
    assert [t.id for t in one] == [t.id for t in two[1:]]
    assert one[1].id == one[0].id + "-2"
    assert one[0].id.startswith("t-") and len(one[0].id) == 14


def test_lora_and_controlnet_objects_become_their_classes(tmp_path: Path) -> None:
    """lora and controlnet lists of JSON objects become Lora and ControlNet; an unknown
    field is a bad line naming the item."""
    row = {
        "prompt": "x",
        "lora": [{"model": "civitai:1@2", "weight": 0.5}],
        "controlnet": [{"preprocessor": "canny", "guide_image": "https://example.com/a.png"}],
    }
    (task,) = read_tasks(_write_tasks(tmp_path / "a.jsonl", [row]))
    assert task.options["lora"] == [Lora("civitai:1@2", 0.5)]
    assert task.options["controlnet"] == [ControlNet("canny", "https://example.com/a.png")]
    bad = _write_tasks(tmp_path / "b.jsonl", [{"prompt": "x", "lora": [{"modle": "a"}]}])
    with pytest.raises(TaskFileError) as info:
        read_tasks(bad)
    (problem,) = info.value.problems
    assert problem.startswith(f"{bad}:1: lora[0]: ")
    assert "modle" in problem


def test_a_manifest_line_cut_short_is_skipped_and_not_continued(
    emulator: Emulator, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A last manifest line cut short (a crash mid-write) is skipped with a warning, its task
    runs again, and the new line starts on a line of its own."""
    tasks = _write_tasks(tmp_path / "t.jsonl", _prompts(2))
    out = tmp_path / "out"
    assert _batch(emulator, tasks, out) == 0
    manifest = out / MANIFEST
    lines = manifest.read_text(encoding="utf-8").splitlines()
    manifest.write_text(lines[0] + "\n" + lines[1][:20], encoding="utf-8")
    torn_id = json.loads(lines[1])["id"]
    emulator.clear_received()
    capsys.readouterr()
    assert _batch(emulator, tasks, out) == 0
    assert f"{manifest}:2: unreadable manifest line skipped" in capsys.readouterr().err
    assert _sent_prompts(emulator) == [f"prompt {torn_id[1:]}"]
    records, warnings = read_manifest(manifest)
    assert (sorted(records), warnings) == (
        ["t0", "t1"],
        [f"{manifest}:2: unreadable manifest line skipped"],
    )


# -- failures, cost cap, retries -----------------------------------------------------------


def test_max_cost_stops_sending_new_tasks(
    emulator: Emulator, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--max-cost 0.003 sends no task once three (0.0039) have reported their cost; exit 9."""
    tasks = _write_tasks(tmp_path / "t.jsonl", _prompts(10))
    argv = ("--max-in-flight", "1", "--max-cost", "0.003", "--json")
    assert _batch(emulator, tasks, tmp_path / "out", *argv) == EXIT_CODES["max_cost"] == 9
    assert _sent_prompts(emulator) == ["prompt 0", "prompt 1", "prompt 2"]
    summary = json.loads(capsys.readouterr().out)
    assert (summary["done"], summary["not_sent"], summary["cost"], summary["stopped"]) == (
        3,
        7,
        0.0039,
        "max_cost",
    )


def test_a_failed_task_is_recorded_and_retried_only_on_request(
    emulator: Emulator, tmp_path: Path
) -> None:
    """A task the server fails is recorded with its error (exit 8), skipped by a plain
    re-run, and sent again with --retry-failed."""
    tasks = _write_tasks(tmp_path / "t.jsonl", _prompts(2))
    out = tmp_path / "out"
    emulator.fail_next_task(error_id=42, message="no GPU")
    assert _batch(emulator, tasks, out, "--max-in-flight", "1") == EXIT_CODES["tasks_failed"] == 8
    failed = _manifest(out)[0]
    assert (failed["id"], failed["status"], failed["error"]["error_id"]) == ("t0", "failed", 42)
    assert failed["error"]["type"] == "TaskError"
    assert failed["task_uuid"] == _sent(emulator)[0]["taskUUID"]
    emulator.clear_received()
    assert _batch(emulator, tasks, out) == 8
    assert _sent(emulator) == []
    assert _batch(emulator, tasks, out, "--retry-failed") == 0
    assert _sent_prompts(emulator) == ["prompt 0"]
    assert [(r["id"], r["status"]) for r in _manifest(out)] == [
        ("t0", "failed"),
        ("t1", "received"),
        ("t1", "done"),
        ("t0", "received"),
        ("t0", "done"),
    ]


def test_an_expired_session_is_reported_and_retried_with_retry_failed(
    emulator: Emulator, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Tasks in flight when the server loses the session are recorded as session_expired,
    the others still run, and only --retry-failed sends the lost ones again."""
    tasks = _write_tasks(tmp_path / "t.jsonl", _prompts(4))
    out = tmp_path / "out"
    emulator.withhold_frames()
    codes: list[int] = []
    runner = threading.Thread(
        target=lambda: codes.append(_batch(emulator, tasks, out, "--max-in-flight", "2"))
    )
    runner.start()
    try:
        assert emulator.wait_for(lambda: len(_sent(emulator)) == 2, seconds(10))
        emulator.expire_sessions()
    finally:
        emulator.release_frames()
        runner.join(seconds(30))
    assert codes == [EXIT_CODES["tasks_failed"]]
    statuses = {task_id: r["status"] for task_id, r in _final(out).items()}
    assert statuses == {
        "t0": "session_expired",
        "t1": "session_expired",
        "t2": "done",
        "t3": "done",
    }
    err = capsys.readouterr().err
    assert "task 't0' (line 1) failed: session expired" in err
    assert "2 done, 0 already done, 2 failed (2 session expired)" in err
    emulator.clear_received()
    assert _batch(emulator, tasks, out) == 8
    assert _sent(emulator) == []
    assert "2 failed earlier (--retry-failed sends them again)" in capsys.readouterr().err
    assert _batch(emulator, tasks, out, "--retry-failed") == 0
    assert sorted(_sent_prompts(emulator)) == ["prompt 0", "prompt 1"]


def test_a_refused_key_stops_the_batch(
    emulator: Emulator, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A refused API key exits 3 with one error line, and records no task."""
    tasks = _write_tasks(tmp_path / "t.jsonl", _prompts(3))
    argv = ["batch", str(tasks), "-o", str(tmp_path / "out"), "--url", emulator.url]
    assert main([*argv, "--api-key", "wrong-key"]) == EXIT_CODES["authentication"] == 3
    assert "diffusionmaster: error: authentication failed" in capsys.readouterr().err
    assert read_manifest(tmp_path / "out" / MANIFEST) == ({}, [])


# -- interrupted runs, resumed -----------------------------------------------------------


class _Lines:
    """The lines a pipe delivers, read on a thread into a queue."""

    def __init__(self, pipe: IO[str]) -> None:
        self._queue: queue.SimpleQueue[str | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._read, args=(pipe,), daemon=True)
        self._thread.start()

    def _read(self, pipe: IO[str]) -> None:
        for line in pipe:
            self._queue.put(line)
        self._queue.put(None)

    def wait_for(self, predicate: Any, timeout: float) -> str:
        """The first line for which ``predicate`` is true (fail after ``timeout`` s)."""
        while True:
            line = self._queue.get(timeout=timeout)
            assert line is not None, "the pipe closed first"
            if predicate(line):
                return line

    def join(self) -> None:
        self._thread.join(SUBPROCESS_TIMEOUT)


def _start(emu: Emulator, tasks: Path, out: Path) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if k != "DIFFUSIONMASTER_API_KEY"}
    argv = ["batch", str(tasks), "-o", str(out), "--max-in-flight", "2"]
    return subprocess.Popen(
        [sys.executable, "-m", "diffusionmaster", *argv, "--url", emu.url, "--api-key", API_KEY],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def _interrupt(emu: Emulator, tmp_path: Path, how: signal.Signals) -> tuple[int, list[str]]:
    """Start a 30-task batch in a subprocess, send it ``how`` after three tasks are
    saved, and return its exit code and the ids its manifest then records (once each)."""
    emu.latency = seconds(0.05)
    tasks = _write_tasks(tmp_path / "t.jsonl", _prompts(30))
    out = tmp_path / "out"
    proc = _start(emu, tasks, out)
    stdout, stderr = _Lines(proc.stdout), _Lines(proc.stderr)  # type: ignore[arg-type]
    try:
        for _ in range(3):
            stdout.wait_for(lambda line: line.endswith(".jpg\n"), SUBPROCESS_TIMEOUT)
        if how == signal.SIGINT:
            emu.withhold_frames()  # nothing ends until the signal is handled
            proc.send_signal(how)
            stderr.wait_for(lambda line: "stopping" in line, SUBPROCESS_TIMEOUT)
            emu.release_frames()
        else:
            proc.send_signal(how)
        code = proc.wait(SUBPROCESS_TIMEOUT)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(SUBPROCESS_TIMEOUT)
        stdout.join()
        stderr.join()
        proc.stdout.close()  # type: ignore[union-attr]
        proc.stderr.close()  # type: ignore[union-attr]
    return code, list(_final(out))


@pytest.mark.slow
def test_a_run_stopped_with_sigint_is_resumed_without_sending_any_task_twice(
    emulator: Emulator, tmp_path: Path
) -> None:
    """Ctrl-C lets the tasks in flight finish and be recorded (exit 130); the re-run sends
    only the rest, so every task is sent once and recorded done once."""
    code, recorded = _interrupt(emulator, tmp_path, signal.SIGINT)
    assert code == EXIT_CODES["interrupted"] == 130
    assert 3 <= len(recorded) < 30
    assert Counter(_sent_prompts(emulator)) == Counter(f"prompt {r[1:]}" for r in recorded)
    emulator.latency = 0
    assert _batch(emulator, tmp_path / "t.jsonl", tmp_path / "out") == 0
    assert Counter(_sent_prompts(emulator)) == Counter(f"prompt {i}" for i in range(30))
    done = [r["id"] for r in _manifest(tmp_path / "out") if r["status"] == "done"]
    assert sorted(done) == sorted(f"t{i}" for i in range(30))


@pytest.mark.slow
def test_a_run_killed_with_sigkill_is_resumed_without_resending_recorded_tasks(
    emulator: Emulator, tmp_path: Path
) -> None:
    """After SIGKILL the re-run sends no task the manifest records, and the final manifest
    has a done line for every id, exactly once."""
    code, recorded = _interrupt(emulator, tmp_path, signal.SIGKILL)
    assert code == -signal.SIGKILL
    assert 3 <= len(recorded) < 30
    emulator.latency = 0
    assert _batch(emulator, tmp_path / "t.jsonl", tmp_path / "out") == 0
    sent = Counter(_sent_prompts(emulator))
    assert {task_id: sent[f"prompt {task_id[1:]}"] for task_id in recorded} == dict.fromkeys(
        recorded, 1
    )
    done = [r["id"] for r in _manifest(tmp_path / "out") if r["status"] == "done"]
    assert sorted(done) == sorted(f"t{i}" for i in range(30))


# -- progress ------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.skipif(sys.platform == "win32", reason="needs a POSIX pseudo-terminal")
def test_progress_bar_with_running_cost_on_a_terminal(tmp_path: Path) -> None:
    """With stderr on a terminal, a tqdm bar shows the tasks done, the rate and the cost."""
    pytest.importorskip("tqdm")
    tasks = _write_tasks(tmp_path / "t.jsonl", _prompts(3))
    code, err = run_on_a_terminal("batch", str(tasks), "--emulator", cwd=tmp_path, columns=120)
    assert code == 0
    assert "3/3" in err
    assert "task/s" in err
    assert "cost 0.0039" in err


def test_a_closed_output_stops_the_run_like_ctrl_c(emulator: Emulator, tmp_path: Path) -> None:
    """When the reader of the paths goes away (``| head -1``), no new task is sent, those in
    flight are recorded, the run exits 141 quietly, and a re-run sends only the rest."""
    emulator.latency = seconds(0.05)
    tasks = _write_tasks(tmp_path / "t.jsonl", _prompts(30))
    out = tmp_path / "out"
    proc = _start(emulator, tasks, out)
    assert proc.stdout is not None and proc.stderr is not None
    try:
        assert proc.stdout.readline().endswith(".jpg\n")
        emulator.withhold_frames()  # nothing more ends until the pipe is closed
        proc.stdout.close()
        emulator.release_frames()
        code = proc.wait(SUBPROCESS_TIMEOUT)
        err = proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(SUBPROCESS_TIMEOUT)
        proc.stderr.close()
    assert (code, err) == (EXIT_CODES["output_closed"], "")
    recorded = list(_final(out))
    assert 1 <= len(recorded) < 30
    assert all(r["status"] == "done" for r in _final(out).values())
    emulator.latency = 0
    assert _batch(emulator, tasks, out) == 0
    assert Counter(_sent_prompts(emulator)) == Counter(f"prompt {i}" for i in range(30))
