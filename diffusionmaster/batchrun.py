"""The ``diffusionmaster batch`` command: text-to-image tasks from a file, resumable.

::

    diffusionmaster batch TASKS -o DIR [--max-in-flight N] [--max-cost AMOUNT]
                                       [--retry-failed] [the client options]

TASKS is a JSONL file (one JSON object a line) or, when its name ends in ``.csv``, a
CSV file with a header row. Each task has a ``prompt``, any option of
:meth:`Client.text2img <diffusionmaster.Client.text2img>` but ``on_image``, and an
optional ``id``. Every line is checked with the client's own checks before anything
is sent; bad lines are reported with their line numbers (exit code 2).

Images are saved under DIR as ``<id>-<n>.<ext>`` (the id's letters, digits, ``-`` and
``_`` only), and one line per task is appended to ``DIR/manifest.jsonl`` and flushed
as each task ends. A second run of the same command skips every task the manifest
records; tasks recorded as failed (a server error, a timeout, a lost session) are
sent again only with ``--retry-failed``, since the server may have billed them.

Ctrl-C stops sending new tasks and waits for those in flight (their results are
paid for); a second Ctrl-C abandons them.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import enum
import hashlib
import importlib
import io
import json
import os
import queue
import re
import signal
import sys
import threading
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Future
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import attrs

from . import cli, tables, tasks
from .errors import (
    AuthenticationError,
    ConnectionFailedError,
    DiffusionMasterError,
    InvalidArgumentError,
    SessionExpiredError,
)
from .generation import GenerationOptions
from .models import ControlNet, Lora

if TYPE_CHECKING:
    from .client import Client
    from .models import Image

__all__ = ["EXIT_CODES", "MANIFEST", "add_parser"]

#: The name of the manifest inside the output folder.
MANIFEST = "manifest.jsonl"

#: The exit codes of ``batch``: those of every command, and two of its own.
EXIT_CODES = {
    **cli.EXIT_CODES,
    "tasks_failed": 8,  # some tasks failed (in this run or, not retried, in an earlier one)
    "max_cost": 9,  # --max-cost was reached before every task was sent
}

HELP = "run the text-to-image tasks of a JSONL or CSV file (resumable)"
EPILOG = (
    "exit codes: 0 every task done, 1 other failure, 2 bad usage or bad task lines "
    "(nothing sent), 3 key refused, 4 connection failed, 8 some tasks failed "
    "(see the manifest; --retry-failed), 9 --max-cost reached before every task was "
    "sent, 130 interrupted"
)

#: The options a task line may hold: those of text2img, but the callback.
OPTIONS = tuple(name for name in GenerationOptions.__annotations__ if name != "on_image")
_BOOLEANS = {"use_cache", "check_nsfw", "prompt_weighting", "return_base64"}
_INTEGERS = {"number_results", "steps", "seed", "clip_skip", "language_id", "offset"}
_NUMBERS = {"guidance", "timeout"}
_TABLES: dict[str, type[enum.IntEnum]] = {
    "model": tables.Model,
    "scheduler": tables.Scheduler,
    "style": tables.Style,
    "size": tables.Size,
}
_WXH = re.compile(r"([0-9]+)[xX]([0-9]+)")
_UNSAFE = re.compile(r"[^A-Za-z0-9_-]+")
#: How many bad lines are listed before "and N more".
_MAX_LISTED = 20


# -- the task file ---------------------------------------------------------------------


@attrs.frozen
class Task:
    """One checked task of the file.

    Attributes:
        id: its id: the file's, or made from its content (see :func:`read_tasks`).
        line: its line number in the file (1 is the first line; the CSV header is 1).
        prompt: the prompt.
        options: the keyword options for ``Client.text2img``.
        stem: the start of its image file names: safe characters only.
    """

    id: str
    line: int
    prompt: str
    options: dict[str, Any]
    stem: str = ""


class TaskFileError(cli.CommandError):
    """Bad lines in a task file (exit code 2).

    Attributes:
        problems: one message per bad line, each starting with ``FILE:LINE:``.
    """

    def __init__(self, problems: list[str]) -> None:
        super().__init__(f"{len(problems)} bad task line(s); nothing was sent", EXIT_CODES["usage"])
        self.problems = problems


class _LineError(Exception):
    """A task line that cannot run; the message says why."""


def read_tasks(path: Path) -> list[Task]:
    """Read and check every task of a JSONL or CSV file; nothing is sent.

    A task without an ``id`` gets one made of its content (``t-`` and 12 hex digits
    of a hash of its prompt and options, ``-2``, ``-3``... for repeats), so editing
    other lines of the file leaves it the same.

    Raises:
        TaskFileError: some lines are bad (all are listed, each with its line number).
        cli.CommandError: the file cannot be read, or holds no task (exit code 2).
    """
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        detail = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise cli.CommandError(
            f"cannot read the task file {str(path)!r}: {detail}", EXIT_CODES["usage"]
        ) from exc
    rows = _csv_rows(text) if path.suffix.lower() == ".csv" else _jsonl_rows(text)
    parsed: list[Task] = []
    problems: list[tuple[int, str]] = []
    for line, row in rows:
        try:
            if isinstance(row, _LineError):
                raise row
            parsed.append(_task(line, row))
        except _LineError as exc:
            problems.append((line, str(exc)))
    problems += _duplicate_ids(parsed)
    if problems:
        raise TaskFileError([f"{path}:{line}: {why}" for line, why in sorted(problems)])
    if not parsed:
        raise cli.CommandError(f"no tasks in {str(path)!r}", EXIT_CODES["usage"])
    return _with_ids(parsed)


def _jsonl_rows(text: str) -> Iterator[tuple[int, dict[str, Any] | _LineError]]:
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError as exc:
            yield number, _LineError(f"not JSON: {exc}")
            continue
        if not isinstance(row, dict):
            yield number, _LineError(f"expected a JSON object, got {type(row).__name__}")
            continue
        yield number, row


def _csv_rows(text: str) -> Iterator[tuple[int, dict[str, Any] | _LineError]]:
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(reader)
    except StopIteration:
        return
    except csv.Error as exc:
        yield 1, _LineError(f"unreadable CSV header: {exc}")
        return
    header = [name.strip() for name in header]
    unknown = [name for name in header if name not in ("id", "prompt", *OPTIONS)]
    if unknown or "prompt" not in header:
        why = f"unknown column(s) {unknown}" if unknown else "no 'prompt' column"
        allowed = ", ".join(("id", "prompt", *OPTIONS))
        yield 1, _LineError(f"{why}; the columns are: {allowed}")
        return
    while True:
        try:
            cells = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            yield reader.line_num, _LineError(f"unreadable CSV: {exc}")
            return
        if not any(cell.strip() for cell in cells):
            continue
        if len(cells) != len(header):
            yield reader.line_num, _LineError(f"{len(cells)} cells for {len(header)} columns")
            continue
        try:
            row = {
                name: _from_cell(name, cell)
                for name, cell in zip(header, cells, strict=True)
                if cell.strip() or name == "prompt"
            }
        except _LineError as exc:
            yield reader.line_num, exc
            continue
        yield reader.line_num, row


def _from_cell(name: str, cell: str) -> Any:
    """A CSV cell as the JSON value it stands for (the checks come later)."""
    value = cell.strip()
    if name in ("id", "prompt", "negative_prompt"):
        return cell
    if name in ("lora", "controlnet"):
        try:
            return json.loads(value)
        except ValueError as exc:
            raise _LineError(f"{name}: expected a JSON list of objects: {exc}") from None
    if name in _BOOLEANS:
        lowered = value.lower()
        if lowered in ("true", "yes", "1"):
            return True
        if lowered in ("false", "no", "0"):
            return False
        return value  # refused by the check, with the allowed values
    if re.fullmatch(r"-?[0-9]+", value):
        return int(value)
    if name in _NUMBERS:
        try:
            return float(value)
        except ValueError:
            return value
    return value


def _task(line: int, row: Mapping[str, Any]) -> Task:
    unknown = sorted(set(row) - {"id", "prompt", *OPTIONS})
    if unknown:
        raise _LineError(f"unknown option(s) {unknown}; allowed: id, prompt, {', '.join(OPTIONS)}")
    task_id = row.get("id")
    if task_id is not None:
        if isinstance(task_id, bool) or not isinstance(task_id, (str, int)):
            raise _LineError(f"id: must be a string or an integer, got {task_id!r}")
        task_id = str(task_id)
        if not task_id.strip():
            raise _LineError("id: must not be empty")
    if "prompt" not in row:
        raise _LineError("no 'prompt'")
    prompt = row["prompt"]
    options = {name: _option(name, row[name]) for name in OPTIONS if name in row}
    try:
        tasks.text2img(prompt, **options)  # the client's own checks: nothing is sent
    except InvalidArgumentError as exc:
        raise _LineError(str(exc)) from None
    except (TypeError, ValueError) as exc:
        raise _LineError(str(exc)) from None
    return Task(task_id if task_id is not None else "", line, prompt, options)


def _option(name: str, value: Any) -> Any:
    """A JSON value in the form ``text2img`` takes: ``"512x768"``, table names,
    and LoRA and ControlNet objects are converted; anything else is left to its check."""
    if isinstance(value, str) and name in _TABLES:
        if name == "size" and (match := _WXH.fullmatch(value.strip())):
            return int(match[1]), int(match[2])
        member = _TABLES[name].__members__.get(value.strip().upper())
        if member is not None:
            return member
        return value
    if name == "size" and isinstance(value, list):
        return tuple(value)
    if name in ("lora", "controlnet") and isinstance(value, list):
        kind: Any = Lora if name == "lora" else ControlNet
        items = []
        for i, item in enumerate(value):
            if not isinstance(item, dict):
                raise _LineError(f"{name}[{i}]: expected a JSON object, got {item!r}")
            try:
                items.append(kind(**item))
            except TypeError as exc:
                raise _LineError(f"{name}[{i}]: {exc}") from None
        return items
    return value


def _duplicate_ids(parsed: list[Task]) -> list[tuple[int, str]]:
    first: dict[str, int] = {}
    problems = []
    for task in parsed:
        if task.id in first:
            problems.append((task.line, f"id {task.id!r} is already used on line {first[task.id]}"))
        elif task.id:
            first[task.id] = task.line
    return problems


def _content_id(task: Task) -> str:
    canonical = json.dumps(
        {"prompt": task.prompt, **task.options}, sort_keys=True, default=repr
    ).encode("utf-8")
    return "t-" + hashlib.sha256(canonical).hexdigest()[:12]


def _with_ids(parsed: list[Task]) -> list[Task]:
    """Give tasks without an id one made from their content, and every task a stem."""
    used = {task.id for task in parsed if task.id}
    named: list[Task] = []
    for task in parsed:
        task_id = task.id
        if not task_id:
            base = task_id = _content_id(task)
            repeat = 1
            while task_id in used:
                repeat += 1
                task_id = f"{base}-{repeat}"
            used.add(task_id)
        named.append(attrs.evolve(task, id=task_id))
    # File names: the id's safe characters; an id that had others, or whose name would
    # clash with another's (also on case-insensitive file systems), gets a hash suffix.
    safe = {task.id: _UNSAFE.sub("_", task.id)[:80] for task in named}
    seen: dict[str, int] = {}
    for name in safe.values():
        seen[name.casefold()] = seen.get(name.casefold(), 0) + 1
    out = []
    for task in named:
        stem = safe[task.id]
        if stem != task.id or seen[stem.casefold()] > 1:
            stem = f"{stem}-{hashlib.sha256(task.id.encode('utf-8')).hexdigest()[:8]}"
        out.append(attrs.evolve(task, stem=stem))
    return out


# -- the manifest ----------------------------------------------------------------------


def read_manifest(path: Path) -> tuple[dict[str, dict[str, Any]], list[str]]:
    """The last record of each task id in a manifest, and warnings about lines skipped.

    A line cut short by a crash (the last one) or otherwise unreadable is skipped with
    a warning: its task runs again.
    """
    records: dict[str, dict[str, Any]] = {}
    warnings: list[str] = []
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return records, warnings
    except OSError as exc:
        raise cli.CommandError(
            f"cannot read the manifest {str(path)!r}: {exc.strerror or exc}",
            EXIT_CODES["failure"],
        ) from exc
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            record = None
        if not (isinstance(record, dict) and isinstance(record.get("id"), str)):
            warnings.append(f"{path}:{number}: unreadable manifest line skipped")
            continue
        records[record["id"]] = record
    return records, warnings


class _ManifestWriter:
    """Appends one JSON line per record, flushed at once. Not thread-safe (main thread)."""

    def __init__(self, path: Path) -> None:
        try:
            self._file: IO[str] = path.open("a+", encoding="utf-8")
            # A crash may have cut the last line short: start ours on a line of its own.
            if self._file.tell() > 0:
                self._file.seek(self._file.tell() - 1)
                if self._file.read(1) != "\n":
                    self._file.write("\n")
        except OSError as exc:
            raise cli.CommandError(
                f"cannot write the manifest {str(path)!r}: {exc.strerror or exc}",
                EXIT_CODES["failure"],
            ) from exc

    def append(self, record: Mapping[str, Any]) -> None:
        self._file.write(json.dumps(record, ensure_ascii=False) + "\n")
        self._file.flush()

    def close(self) -> None:
        self._file.close()


# -- running ---------------------------------------------------------------------------


@attrs.define
class _Tally:
    """What this run did, for the summary."""

    total: int
    already_done: int = 0
    done: int = 0
    failed: list[dict[str, Any]] = attrs.field(factory=list)
    earlier_failed: list[str] = attrs.field(factory=list)
    images: int = 0
    cost: Decimal = Decimal(0)
    sent: int = 0
    stopped: str | None = None  # "max_cost", "interrupted", or a fatal error's message

    def summary(self, to_send: int) -> dict[str, Any]:
        return {
            "total": self.total,
            "done": self.done,
            "already_done": self.already_done,
            "failed": len(self.failed),
            "session_expired": sum(f["status"] == "session_expired" for f in self.failed),
            "failed_earlier": len(self.earlier_failed),
            "not_sent": to_send - self.sent,
            "images": self.images,
            "cost": float(self.cost),
            "stopped": self.stopped,
            "failures": self.failed,
        }


def _error_record(exc: BaseException) -> dict[str, Any]:
    message = str(exc)
    if isinstance(exc, DiffusionMasterError):
        message = cli._describe(exc)[1]
    return {
        "type": type(exc).__name__,
        "message": message,
        "error_id": getattr(exc, "error_id", None),
    }


def _cost(image: Image) -> Decimal:
    # repr() is the shortest text that reads back as the same float: the number the
    # server wrote, so costs add up exactly (as in diffusionmaster.usage).
    return Decimal(repr(image.cost)) if image.cost is not None else Decimal(0)


def _progress_bar(total: int) -> Any:
    """A tqdm bar (rate, ETA, running cost) on a terminal's stderr, else None."""
    if not sys.stderr.isatty():
        return None
    try:
        tqdm = importlib.import_module("tqdm")
    except ImportError:
        return None
    return tqdm.tqdm(total=total, unit="task", desc="batch", file=sys.stderr)


def _print_flushed(line: str) -> None:
    # Flushed at once, so that a pipe reader sees each path as its task ends.
    print(line, flush=True)


@contextlib.contextmanager
def _first_interrupt_stops(stop: threading.Event) -> Iterator[None]:
    """The first Ctrl-C sets ``stop`` (in-flight tasks finish); the second interrupts.

    Only in the main thread, and only when SIGINT has Python's default handler.
    """
    if (
        threading.current_thread() is not threading.main_thread()
        or signal.getsignal(signal.SIGINT) is not signal.default_int_handler
    ):
        yield
        return

    def handler(signum: int, frame: object) -> None:
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()
        # os.write: print() is not safe in a signal handler (a write may be under way).
        os.write(2, b"diffusionmaster: stopping: waiting for the tasks in flight "
                    b"(Ctrl-C again to abandon them)\n")  # fmt: skip

    signal.signal(signal.SIGINT, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def _run(args: argparse.Namespace) -> int:
    if args.max_in_flight < 1:
        raise cli.CommandError("--max-in-flight must be >= 1", EXIT_CODES["usage"])
    try:
        task_list = read_tasks(Path(args.tasks))
    except TaskFileError as exc:
        for problem in exc.problems[:_MAX_LISTED]:
            print(f"diffusionmaster: {problem}", file=sys.stderr)
        if len(exc.problems) > _MAX_LISTED:
            print(
                f"diffusionmaster: ... and {len(exc.problems) - _MAX_LISTED} more", file=sys.stderr
            )
        raise
    folder = cli._output_folder(args)
    manifest_path = folder / MANIFEST
    records, warnings = read_manifest(manifest_path)
    for warning in warnings:
        print(f"diffusionmaster: warning: {warning}", file=sys.stderr)
    tally = _Tally(total=len(task_list))
    todo = []
    for task in task_list:
        status = records.get(task.id, {}).get("status")
        if status == "done":
            tally.already_done += 1
        elif status is not None and not args.retry_failed:
            tally.earlier_failed.append(task.id)
        else:
            todo.append(task)
    if todo:
        writer = _ManifestWriter(manifest_path)
        try:
            code = _send(args, todo, folder, writer, tally)
        finally:
            writer.close()
    else:
        code = 0
    return _finish(args, tally, len(todo), manifest_path, code)


def _send(
    args: argparse.Namespace, todo: list[Task], folder: Path, writer: _ManifestWriter,
    tally: _Tally,
) -> int:  # fmt: skip
    """Send the tasks with at most --max-in-flight in flight; record each as it ends."""
    stop = threading.Event()
    fatal: DiffusionMasterError | None = None
    ended: queue.SimpleQueue[Future[Any]] = queue.SimpleQueue()
    pending = iter(todo)
    running: dict[Future[Any], Task] = {}
    bar = _progress_bar(len(todo))
    write: Callable[[str], None] = _print_flushed if bar is None else bar.write
    with cli._client(args) as client, _first_interrupt_stops(stop):
        batch = client.batch(max_in_flight=args.max_in_flight)
        try:

            def fill() -> None:
                # New tasks go out only while nothing says stop; a task is submitted
                # only when there is room, so the Batch sends it at once.
                while len(running) < args.max_in_flight and not stop.is_set():
                    if args.max_cost is not None and tally.cost >= args.max_cost:
                        tally.stopped = tally.stopped or "max_cost"
                        return
                    task = next(pending, None)
                    if task is None:
                        return
                    future = batch.submit(client.text2img, task.prompt, **task.options)
                    running[future] = task
                    tally.sent += 1
                    future.add_done_callback(ended.put)

            fill()
            while running:
                future = ended.get()
                task = running.pop(future)
                error = _record(client, future, task, folder, writer, tally, args, write)
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix_str(f"cost {tally.cost}", refresh=False)
                if isinstance(error, (AuthenticationError, ConnectionFailedError)):
                    # Every further task would fail the same way: send no more.
                    fatal = fatal or error
                    stop.set()
                fill()
        finally:
            batch.cancel()
            if bar is not None:
                bar.close()
    if fatal is not None:
        code, message = cli._describe(fatal)
        tally.stopped = message
        return code
    if stop.is_set():
        tally.stopped = "interrupted"
        return EXIT_CODES["interrupted"]
    return 0


def _record(
    client: Client, future: Future[Any], task: Task, folder: Path, writer: _ManifestWriter,
    tally: _Tally, args: argparse.Namespace, write: Callable[[str], None],
) -> BaseException | None:  # fmt: skip
    """Save the images of an ended task and append its manifest line; return its error."""
    record: dict[str, Any] = {"id": task.id, "line": task.line, "status": "done"}
    error: BaseException | None = None
    if future.cancelled():
        return None
    error = future.exception()
    images: list[Image] = [] if error is not None else future.result()
    entries = []
    paths = []
    for number, image in enumerate(images, 1):
        entry = {"uuid": image.uuid, "url": image.url, "cost": image.cost, "path": None}
        entries.append(entry)
        tally.cost += _cost(image)
        tally.images += 1
        if error is None:
            try:
                saved = cli._save(image, folder / f"{task.stem}-{number}", args.timeout)
                entry["path"] = str(saved)
                paths.append(str(saved))
            except DiffusionMasterError as exc:
                error = exc
    task_uuid = images[0].task_uuid if images else getattr(error, "task_uuid", None)
    record["task_uuid"] = task_uuid
    record["images"] = entries
    record["cost"] = float(sum((_cost(i) for i in images), Decimal(0)))
    if error is not None:
        record["status"] = "session_expired" if isinstance(error, SessionExpiredError) else "failed"
        record["error"] = _error_record(error)
        tally.failed.append({"id": task.id, "status": record["status"], **record["error"]})
        print(f"diffusionmaster: task {task.id!r} (line {task.line}) failed: "
              f"{record['error']['message']}", file=sys.stderr)  # fmt: skip
    else:
        record["error"] = None
        tally.done += 1
    writer.append(record)
    if not args.json:
        for path in paths:
            write(path)
    return error


def _finish(
    args: argparse.Namespace, tally: _Tally, to_send: int, manifest: Path, code: int
) -> int:
    summary = tally.summary(to_send)
    summary["manifest"] = str(manifest)
    if code == 0:
        if tally.failed or tally.earlier_failed:
            code = EXIT_CODES["tasks_failed"]
        elif summary["not_sent"]:
            code = EXIT_CODES["max_cost"]
    if args.json:
        cli._print_json(summary)
    parts = [f"{tally.done} done", f"{tally.already_done} already done"]
    if tally.failed:
        expired = summary["session_expired"]
        parts.append(
            f"{len(tally.failed)} failed" + (f" ({expired} session expired)" if expired else "")
        )
    if tally.earlier_failed:
        parts.append(
            f"{len(tally.earlier_failed)} failed earlier (--retry-failed sends them again)"
        )
    if summary["not_sent"]:
        why = "--max-cost reached" if tally.stopped == "max_cost" else "stopped"
        parts.append(f"{summary['not_sent']} not sent ({why})")
    print(
        f"diffusionmaster: batch: {', '.join(parts)}; {tally.images} images, cost {tally.cost}; "
        f"manifest {manifest}",
        file=sys.stderr,
    )
    return code


# -- the command line ------------------------------------------------------------------


def _amount(text: str) -> Decimal:
    try:
        value = Decimal(text)
    except InvalidOperation:
        value = Decimal(-1)
    if not value.is_finite() or value < 0:
        raise argparse.ArgumentTypeError(f"expected an amount >= 0, got {text!r}")
    return value


def add_parser(command: Callable[..., argparse.ArgumentParser]) -> None:
    """Add the ``batch`` command through ``cli._parser``'s ``command`` helper."""
    sub = command("batch", _run, HELP, client=True)
    sub.epilog = EPILOG
    sub.add_argument("tasks", metavar="TASKS", help="a JSONL file, or a .csv file with a header")
    sub.add_argument(
        "-o", "--output", default=".", metavar="DIR",
        help=f"output folder, with the images and {MANIFEST} (default: .)",
    )  # fmt: skip
    sub.add_argument(
        "--max-in-flight", type=int, default=16, metavar="N",
        help="the most tasks on the wire at once (default: 16)",
    )  # fmt: skip
    sub.add_argument(
        "--max-cost", type=_amount, metavar="AMOUNT",
        help="send no new task once this run's reported cost reaches AMOUNT",
    )  # fmt: skip
    sub.add_argument(
        "--retry-failed", action="store_true",
        help="send again the tasks the manifest records as failed (they may have been billed)",
    )  # fmt: skip
