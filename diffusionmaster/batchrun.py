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
``_`` only). ``DIR/manifest.jsonl`` gets a ``received`` line for a task as soon as its
results arrive (with its task UUID, image UUIDs, URLs and cost), then a ``done`` line
with the paths once its images are saved, or a ``failed`` or ``session_expired`` line
with the error; each line is flushed at once, and the last line of an id counts.

A second run of the same command skips the tasks recorded as done, downloads the
images of those recorded as received (paid for: never sent again), and sends the
rest but those recorded as failed, which may have been billed: ``--retry-failed``
sends them again.

Ctrl-C stops sending new tasks and waits for those in flight (their results are
paid for); a second Ctrl-C abandons them.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import queue
import signal
import sys
import textwrap
import threading
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Future
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import attrs

from . import cli
from ._taskfile import Task, TaskFileError, read_tasks
from .errors import (
    AuthenticationError,
    ConnectionFailedError,
    DiffusionMasterError,
    SessionExpiredError,
)
from .models import Image

if sys.platform != "win32":
    import fcntl
if TYPE_CHECKING:
    from .batch import Batch
    from .client import Client

__all__ = ["EXIT_CODES", "MANIFEST", "add_parser", "read_manifest", "read_tasks"]

#: The name of the manifest inside the output folder.
MANIFEST = "manifest.jsonl"

#: The exit codes of ``batch``: those of every command (8 and 9 are batch's own).
EXIT_CODES = cli.EXIT_CODES

HELP = "run the text-to-image tasks of a JSONL or CSV file (resumable)"
_BATCH_EXITS = (
    (0, "every task of the file is done (in this run or an earlier one)"),
    (2, "a bad command line or argument, bad task lines (each listed with its line "
        "number), a malformed --url, or no API key; nothing was sent"),
    (8, "some tasks failed, in this run or (not retried) an earlier one: see the "
        "manifest, and --retry-failed"),
    (9, "--max-cost was reached before every task was sent"),
)  # fmt: skip

#: How many bad lines are listed before "and N more".
_MAX_LISTED = 20


# -- the manifest ----------------------------------------------------------------------


def read_manifest(path: Path) -> tuple[dict[str, dict[str, Any]], list[str]]:
    """The last record of each task id in a manifest, and warnings about lines skipped.

    A line cut short by a crash (the last one) or otherwise unreadable is skipped with
    a warning, so the record before it (if any) counts for its task.

    Raises:
        cli.CommandError: the manifest exists but cannot be read (exit code 1).
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
    """Appends one JSON line per record, flushed at once. Not thread-safe (main thread).

    It holds an exclusive lock on the manifest (POSIX ``flock``) while open, so that
    two runs on one folder cannot both send the tasks it lacks: open it before reading.
    """

    def __init__(self, path: Path) -> None:
        self._path = path
        try:
            self._file: IO[str] = path.open("a+", encoding="utf-8")
        except OSError as exc:
            raise self._error(exc) from exc
        try:
            if sys.platform != "win32":
                fcntl.flock(self._file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            # A crash may have cut the last line short: start ours on a line of its own.
            if self._file.tell() > 0:
                self._file.seek(self._file.tell() - 1)
                if self._file.read(1) != "\n":
                    self._file.write("\n")
        except BlockingIOError as exc:
            self._file.close()
            raise cli.CommandError(
                f"another batch is running on {str(path.parent)!r} (its manifest is locked)",
                EXIT_CODES["failure"],
            ) from exc
        except OSError as exc:
            self._file.close()
            raise self._error(exc) from exc

    def _error(self, exc: OSError) -> cli.CommandError:
        return cli.CommandError(
            f"cannot write the manifest {str(self._path)!r}: {exc.strerror or exc}",
            EXIT_CODES["failure"],
        )

    def append(self, record: Mapping[str, Any]) -> None:
        try:
            self._file.write(json.dumps(record, ensure_ascii=False) + "\n")
            self._file.flush()
        except OSError as exc:
            raise self._error(exc) from exc

    def close(self) -> None:
        self._file.close()  # and so the lock is released


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
    to_send: int = 0
    sent: int = 0
    stopped: str | None = None  # "max_cost", "interrupted", or a fatal error's message

    def summary(self) -> dict[str, Any]:
        return {
            "total": self.total,
            "done": self.done,
            "already_done": self.already_done,
            "failed": len(self.failed),
            "session_expired": sum(f["status"] == "session_expired" for f in self.failed),
            "failed_earlier": len(self.earlier_failed),
            "not_sent": self.to_send - self.sent,
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
        "message": " ".join(message.split()),
        "error_id": getattr(exc, "error_id", None),
    }


def _cost(value: object) -> Decimal:
    # A cost that is not a finite number (a hostile or broken server) counts as 0.
    # repr() is the shortest text that reads back as the same float: the number the
    # server wrote, so costs add up exactly (as in diffusionmaster.usage).
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return Decimal(0)
    cost = Decimal(repr(value))
    return cost if cost.is_finite() else Decimal(0)


def _images_of(record: Mapping[str, Any]) -> list[Image]:
    """The images a ``received`` record lists, to download again.

    Raises:
        ValueError: the record lists no image with a URL (edited by hand?).
    """
    images = []
    for entry in record.get("images") or ():
        if not (isinstance(entry, dict) and isinstance(entry.get("url"), str)):
            raise ValueError("its manifest line lists no URL to download its images from")
        images.append(Image(str(entry.get("uuid")), entry["url"], record.get("task_uuid")))
    if not images:
        raise ValueError("its manifest line lists no images")
    return images


def _save_all(images: list[Image], folder: Path, stem: str, timeout: float | None) -> list[str]:
    """Download and write the images of one task as ``<stem>-<n>.<ext>`` (on a worker)."""
    return [
        str(cli._save(image, folder / f"{stem}-{number}", timeout))
        for number, image in enumerate(images, 1)
    ]


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
            more = len(exc.problems) - _MAX_LISTED
            print(f"diffusionmaster: ... and {more} more", file=sys.stderr)
        raise cli.CommandError(str(exc), EXIT_CODES["usage"]) from exc
    folder = cli._output_folder(args)
    manifest_path = folder / MANIFEST
    writer = _ManifestWriter(manifest_path)
    try:
        code, tally = _resume(args, task_list, folder, writer)
    finally:
        writer.close()
    return _finish(args, tally, manifest_path, code)


def _resume(
    args: argparse.Namespace, task_list: list[Task], folder: Path, writer: _ManifestWriter
) -> tuple[int, _Tally]:
    """Sort the tasks by what the manifest says of them, and run what is left."""
    records, warnings = read_manifest(folder / MANIFEST)
    for warning in warnings:
        print(f"diffusionmaster: warning: {warning}", file=sys.stderr)
    tally = _Tally(total=len(task_list))
    todo: list[Task] = []
    fetch: list[tuple[Task, dict[str, Any]]] = []
    for task in task_list:
        record = records.get(task.id)
        status = None if record is None else record.get("status")
        if status == "done":
            tally.already_done += 1
        elif status == "received":
            assert record is not None
            fetch.append((task, record))  # paid for: download, never send again
        elif status is not None and not args.retry_failed:
            tally.earlier_failed.append(task.id)
        else:
            todo.append(task)
    tally.to_send = len(todo)
    if not (todo or fetch):
        return 0, tally
    with cli._client(args) as client:
        return _Runner(args, client, folder, writer, tally).run(todo, fetch), tally


class _Runner:
    """One run: sends the tasks, saves their images, writes the manifest.

    Everything here runs in the calling thread but the downloads, which run on the
    client's worker threads (``Client.submit``); the Futures of tasks and downloads end
    in one queue that the calling thread reads, so the manifest and the tally have a
    single writer.

    Each task gets a ``received`` line as soon as its results arrive (they are paid for:
    a later run downloads them again rather than sending the task), then a ``done``
    line once its images are saved.
    """

    def __init__(
        self, args: argparse.Namespace, client: Client, folder: Path, writer: _ManifestWriter,
        tally: _Tally,
    ) -> None:  # fmt: skip
        self.args = args
        self.client = client
        self.folder = folder
        self.writer = writer
        self.tally = tally
        self.stop = threading.Event()
        self.fatal: tuple[int, str] | None = None
        self.ended: queue.SimpleQueue[Future[Any]] = queue.SimpleQueue()
        self.running: dict[Future[Any], Task] = {}  # tasks sent, results not yet in
        self.saving: dict[Future[Any], tuple[Task, dict[str, Any]]] = {}
        self.bar: Any = None
        self.write: Callable[[str], None] = cli._print_line
        self.output_closed = False

    def run(self, todo: list[Task], fetch: list[tuple[Task, dict[str, Any]]]) -> int:
        """Run ``todo`` and download what ``fetch`` records; return the exit code."""
        self.bar = cli._progress_bar(len(todo) + len(fetch), unit="task", desc="batch")
        if self.bar is not None:
            self.write = self.bar.write
        batch = self.client.batch(max_in_flight=self.args.max_in_flight)
        try:
            with _first_interrupt_stops(self.stop):
                for task, earlier in fetch:
                    record = {**earlier, "id": task.id, "line": task.line}
                    try:
                        images = _images_of(record)
                    except ValueError as exc:
                        self._failed(task, {**record, "status": "received"}, exc)
                        continue
                    self._save(task, record, images)
                pending = iter(todo)
                self._fill(batch, pending)
                while self.running or self.saving:
                    future = self.ended.get()
                    if future in self.running:
                        self._received(future, self.running.pop(future))
                    else:
                        self._saved(future, *self.saving.pop(future))
                    self._fill(batch, pending)
        finally:
            batch.cancel()
            if self.bar is not None:
                self.bar.close()
        if self.fatal is not None:
            self.tally.stopped = self.fatal[1]
            return self.fatal[0]
        if self.output_closed:
            self.tally.stopped = "output_closed"
            return cli._output_closed()
        if self.stop.is_set():
            self.tally.stopped = "interrupted"
            return EXIT_CODES["interrupted"]
        return 0

    def _fill(self, batch: Batch, pending: Iterator[Task]) -> None:
        # A task is submitted only when there is room, so the Batch sends it at once,
        # and only while nothing says stop: the cost cap, Ctrl-C, a fatal error.
        max_cost = self.args.max_cost
        while len(self.running) < self.args.max_in_flight and not self.stop.is_set():
            if max_cost is not None and self.tally.cost >= max_cost:
                self.tally.stopped = "max_cost"
                return
            task = next(pending, None)
            if task is None:
                return
            future = batch.submit(self.client.text2img, task.prompt, **task.options)
            self.running[future] = task
            self.tally.sent += 1
            future.add_done_callback(self.ended.put)

    def _received(self, future: Future[Any], task: Task) -> None:
        record: dict[str, Any] = {"id": task.id, "line": task.line}
        error = future.exception()
        if error is not None:
            status = "session_expired" if isinstance(error, SessionExpiredError) else "failed"
            record.update(status=status, task_uuid=getattr(error, "task_uuid", None))
            record.update(images=[], cost=0.0)
            self._failed(task, record, error)
            if isinstance(error, (AuthenticationError, ConnectionFailedError)):
                # Every further task would fail the same way: send no more.
                self._fatal(cli._describe(error))
            return
        images: list[Image] = future.result()
        cost = sum((_cost(image.cost) for image in images), Decimal(0))
        self.tally.cost += cost
        self.tally.images += len(images)
        record.update(
            status="received",
            task_uuid=images[0].task_uuid if images else None,
            images=[
                {"uuid": i.uuid, "url": i.url, "cost": float(_cost(i.cost)), "path": None}
                for i in images
            ],
            cost=float(cost),
            error=None,
        )
        self.writer.append(record)  # paid for: recorded before any download
        self._save(task, record, images)

    def _save(self, task: Task, record: dict[str, Any], images: list[Image]) -> None:
        future = self.client.submit(_save_all, images, self.folder, task.stem, self.args.timeout)
        self.saving[future] = (task, record)
        future.add_done_callback(self.ended.put)

    def _saved(self, future: Future[Any], task: Task, record: dict[str, Any]) -> None:
        error = future.exception()
        if error is not None:
            # The results stay recorded as received: the next run downloads them again.
            self._failed(task, {**record, "status": "received"}, error)
            if isinstance(error, cli.CommandError):  # the folder cannot be written
                self._fatal((error.code, str(error)))
            return
        paths: list[str] = future.result()
        images = [
            {**entry, "path": path} for entry, path in zip(record["images"], paths, strict=True)
        ]
        self.writer.append({**record, "status": "done", "images": images, "error": None})
        self.tally.done += 1
        self._advance()
        if not (self.args.json or self.output_closed):
            try:
                for path in paths:
                    self.write(path)
            except BrokenPipeError:
                # The reader went away (``| head``): like a first Ctrl-C, send no more
                # and let the tasks in flight finish and be recorded.
                self.output_closed = True
                self.stop.set()

    def _failed(self, task: Task, record: dict[str, Any], error: BaseException) -> None:
        record["error"] = _error_record(error)
        self.writer.append(record)
        self.tally.failed.append({"id": task.id, "status": record["status"], **record["error"]})
        what = "images not saved" if record["status"] == "received" else "failed"
        print(
            f"diffusionmaster: task {task.id!r} (line {task.line}) {what}: "
            f"{record['error']['message']}",
            file=sys.stderr,
        )
        self._advance()

    def _fatal(self, failure: tuple[int, str]) -> None:
        self.fatal = self.fatal or failure
        self.stop.set()

    def _advance(self) -> None:
        if self.bar is not None:
            self.bar.set_postfix_str(f"cost {self.tally.cost}", refresh=False)
            self.bar.update(1)


def _finish(args: argparse.Namespace, tally: _Tally, manifest: Path, code: int) -> int:
    summary = tally.summary()
    summary["manifest"] = str(manifest)
    if code == 0:
        if tally.failed or tally.earlier_failed:
            code = EXIT_CODES["tasks_failed"]
        elif summary["not_sent"]:
            code = EXIT_CODES["max_cost"]
    if code == EXIT_CODES["output_closed"]:
        return code  # as every command: nothing more on stdout nor stderr
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
        f"diffusionmaster: batch: {', '.join(parts)}; {tally.images} images, "
        f"cost {tally.cost}; manifest {manifest}",
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
    rows = {code: text for _, code, text in cli._EXIT_TABLE} | dict(_BATCH_EXITS)
    sub.epilog = "exit codes:\n" + "\n".join(
        textwrap.fill(text, 78, initial_indent=f"  {code:<4} ", subsequent_indent=" " * 7)
        for code, text in sorted(rows.items())
        if code not in (EXIT_CODES["timeout"], EXIT_CODES["session_expired"], EXIT_CODES["task"])
    )
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
