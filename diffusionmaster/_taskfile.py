"""Task files of the ``batch`` command: JSONL or CSV, one text-to-image task a line.

Pure but for reading the file (and the local image inputs a ControlNet names): each
line is turned into the arguments of :meth:`Client.text2img
<diffusionmaster.Client.text2img>` and checked with the client's own checks, so
that a bad line is reported, with its number, before anything is sent.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import re
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs

from . import tasks
from .errors import InvalidArgumentError
from .generation import GenerationOptions
from .models import ControlNet, Lora

__all__ = ["OPTIONS", "Task", "TaskFileError", "read_tasks"]

#: The options a task line may hold: those of text2img, but the callback.
OPTIONS = tuple(name for name in GenerationOptions.__annotations__ if name != "on_image")
_BOOLEANS = {"use_cache", "check_nsfw", "prompt_weighting", "return_base64"}
_INTEGERS = {"number_results", "steps", "seed", "clip_skip", "language_id", "offset"}
_NUMBERS = {"guidance", "timeout"}
_UNSAFE = re.compile(r"[^A-Za-z0-9_-]+")


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


class TaskFileError(ValueError):
    """The task file cannot be read, holds no task, or has bad lines.

    Attributes:
        problems: one message per bad line, each starting with ``FILE:LINE:``
            (empty when the file as a whole is the problem).
    """

    def __init__(self, message: str, problems: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.problems = list(problems)


class _LineError(Exception):
    """A task line that cannot run; the message says why."""


def read_tasks(path: Path) -> list[Task]:
    """Read and check every task of a JSONL or CSV file; nothing is sent.

    A task without an ``id`` gets one made of its content (``t-`` and 12 hex digits
    of a hash of its prompt and options, ``-2``, ``-3``... for repeats), so editing
    other lines of the file leaves it the same.

    Raises:
        TaskFileError: the file cannot be read, holds no task, or has bad lines (all
            listed in ``problems``, each with its line number).
    """
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        detail = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise TaskFileError(f"cannot read the task file {str(path)!r}: {detail}") from exc
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
        raise TaskFileError(
            f"{len(problems)} bad task line(s); nothing was sent",
            [f"{path}:{line}: {why}" for line, why in sorted(problems)],
        )
    if not parsed:
        raise TaskFileError(f"no tasks in {str(path)!r}")
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
    """A JSON value in the form ``text2img`` takes: LoRA and ControlNet objects become
    :class:`Lora` and :class:`ControlNet`; anything else (``"512x768"``, model names...)
    is the library's to check, in the one spelling it shares with the command line."""
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
