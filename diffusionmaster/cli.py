"""The ``diffusionmaster`` command line (also ``python -m diffusionmaster``).

Commands::

    diffusionmaster generate PROMPT [-n N] [--size WxH] [--model NAME|ID|AIR] [--seed S]
                                    [--negative TEXT] [--steps N] [--guidance G]
                                    [--scheduler NAME|ID] [--style NAME|ID]
                                    [--lora MODEL[:WEIGHT] ...]
                                    [--controlnet PREPROCESSOR:IMAGE[:WEIGHT] ...]
                                    [--return-base64] [-o DIR]
    diffusionmaster img2img PROMPT IMAGE [the options of generate]
    diffusionmaster inpaint PROMPT IMAGE MASK [the options of generate]
    diffusionmaster preprocess IMAGE PREPROCESSOR [--width W] [--height H] [--mask MASK]
                                    [--low-threshold N] [--high-threshold N]
                                    [--hands-and-face] [-o DIR]
    diffusionmaster upscale IMAGE [--factor 2|3|4] [-o DIR]
    diffusionmaster remove-bg IMAGE [-o DIR]
    diffusionmaster caption IMAGE
    diffusionmaster enhance PROMPT [--versions N] [--max-length N]
    diffusionmaster upload IMAGE
    diffusionmaster emulator [--port P] [--host H] [--api-key KEY ...]
    diffusionmaster demo [--prompt TEXT] [-n N] [-o DIR]

Every command that talks to the service takes ``--api-key KEY`` (default: the
``DIFFUSIONMASTER_API_KEY`` variable), ``--url URL`` (default: the
``DIFFUSIONMASTER_URL`` variable, else the production service), ``--emulator``
(run against an embedded emulator: no key, no network), ``--timeout SECONDS``,
``--json`` and ``-v``/``--verbose``. An IMAGE is a file path or the UUID of an
image on the server. Sizes, models, schedulers and styles are spelled as the
Python API accepts them (``512x768``, ``SDXL_V1_0`` or ``4``): the command line
parses them with the library's own checks.

Images are saved under ``-o DIR`` (default: the current directory) as
``<uuid>.<ext>`` and their paths printed one per line as they arrive. ``--json``
prints one JSON object instead. While several images are generated a progress
bar is drawn on stderr when tqdm is installed (the ``progress`` extra) and
stderr is a terminal.

Expected failures print one line, ``diffusionmaster: error: ...``, to stderr
(with ``--json``, also an ``{"error": {...}}`` object on stdout) and exit with a
code that says what went wrong (see :data:`EXIT_CODES`). A closed output (``| head``)
ends the command quietly with code 141, as a shell reports a program ended by
SIGPIPE.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import logging
import os
import sys
import textwrap
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, NoReturn, TypeVar

from . import _validate, generation, tables
from .errors import (
    AuthenticationError,
    ConnectionFailedError,
    DiffusionMasterError,
    InvalidArgumentError,
    RequestTimeoutError,
    SessionExpiredError,
    TaskError,
)
from .models import ControlNet, Lora

if TYPE_CHECKING:
    from .client import Client
    from .models import Image

T = TypeVar("T")

__all__ = ["EXIT_CODES", "main"]

API_KEY_VARIABLE = "DIFFUSIONMASTER_API_KEY"
DEMO_KEY = "demo-key"
#: What ``demo`` tells the user after its images (on stderr: stdout lists the files).
DEMO_NOTE = (
    "These images are placeholders drawn by a local emulator: nothing was sent to "
    "DiffusionMaster and nothing was billed. To generate real images, set your API key "
    f'(export {API_KEY_VARIABLE}=...) and run: diffusionmaster generate "a prompt"'
)
EMULATOR_KEY = "emulator-key"

# The exit codes of the command line: (name, code, meaning), the one source of
# EXIT_CODES and of the table at the end of --help.
_EXIT_TABLE = (
    ("ok", 0, "success"),
    ("failure", 1, "any other failure: an unwritable output folder, the emulator's port in "
     "use, an unreadable answer..."),
    ("usage", 2, "a bad command line or argument, a malformed --url, or no API key; "
     "nothing was sent"),
    ("authentication", 3, "the server refused the API key"),
    ("connection", 4, "the server could not be reached, or the connection was lost for good"),
    ("timeout", 5, "--timeout passed before the results arrived"),
    ("session_expired", 6, "the connection came back but the server had lost the results"),
    ("task", 7, "the server reported an error for the task"),
    ("tasks_failed", 8, "batch: some tasks failed, in this run or (not retried) an earlier "
     "one; see the manifest, and --retry-failed"),
    ("max_cost", 9, "batch: --max-cost was reached before every task was sent"),
    ("interrupted", 130, "interrupted (Ctrl-C)"),
    ("output_closed", 141, "the output was closed before everything was printed "
     "(e.g. | head); nothing is printed on stderr"),
)  # fmt: skip

#: The exit codes of the command line, by meaning.
EXIT_CODES = {name: code for name, code, _ in _EXIT_TABLE}

# (exception type, exit code, what the message starts with); the first match wins.
_FAILURES: tuple[tuple[type[DiffusionMasterError], int, str], ...] = (
    (AuthenticationError, EXIT_CODES["authentication"], "authentication failed"),
    (SessionExpiredError, EXIT_CODES["session_expired"], "session expired"),
    (RequestTimeoutError, EXIT_CODES["timeout"], "timed out"),
    (ConnectionFailedError, EXIT_CODES["connection"], "connection failed"),
    (TaskError, EXIT_CODES["task"], "task failed"),
)

# Parameter names of the library, as the command line spells them.
_FLAGS = {
    "prompt": "PROMPT",
    "image": "IMAGE",
    "mask": "MASK",
    "preprocessor": "PREPROCESSOR",
    "number_results": "-n/--number",
    "size": "--size",
    "model": "--model",
    "seed": "--seed",
    "negative_prompt": "--negative",
    "steps": "--steps",
    "guidance": "--guidance",
    "scheduler": "--scheduler",
    "style": "--style",
    "lora": "--lora",
    "controlnet": "--controlnet",
    "return_base64": "--return-base64",
    "width": "--width",
    "height": "--height",
    "low_threshold_canny": "--low-threshold",
    "high_threshold_canny": "--high-threshold",
    "include_hands_and_face": "--hands-and-face",
    "factor": "--factor",
    "versions": "--versions",
    "max_length": "--max-length",
    "timeout": "--timeout",
    "url": "--url",
}


class CommandError(Exception):
    """An expected failure of a command: its one-line message and exit code."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


class _HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Help that shows each option's default (when it has one worth showing) and keeps
    the line breaks of the description and epilog (the exit code table)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if action.default in (None, False, argparse.SUPPRESS) or "default" in text:
            return text
        return super()._get_help_string(action)


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors are one line (and exit code 2), and whose
    help shows the defaults (sub-parsers, a ``batch`` one included, inherit both)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", _HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        raise CommandError(f"{message} (see {self.prog} --help)", EXIT_CODES["usage"])


def _need_emulator() -> None:
    try:
        import PIL  # noqa: F401
        import websockets  # noqa: F401
    except ImportError as exc:
        raise CommandError(
            f"this needs the emulator extra ({exc.name} is missing): "
            'python -m pip install "diffusionmaster[emulator]"',
            EXIT_CODES["failure"],
        ) from exc


# -- argument types -------------------------------------------------------------------


def _library_check(check: Callable[[str, object], T], name: str) -> Callable[[str], T]:
    """An argparse type that parses a value with the library's own check, so that the
    command line and the Python API accept the same spellings (ids given as digits)."""

    def parse(text: str) -> T:
        try:
            return check(name, int(text) if text.isascii() and text.isdigit() else text)
        except InvalidArgumentError as exc:
            raise argparse.ArgumentTypeError(str(exc).removeprefix(f"{name}: ")) from None

    return parse


_size = _library_check(_validate.size, "size")
_model = _library_check(_validate.model, "model")
_scheduler = _library_check(
    lambda name, value: _validate.table_id(name, value, tables.Scheduler), "scheduler"
)
_style = _library_check(lambda name, value: _validate.table_id(name, value, tables.Style), "style")


def _split_weight(text: str) -> tuple[str, float | None]:
    """``THING:WEIGHT`` -> (THING, WEIGHT) when the part after the last colon is a
    number; else (text, None). An AIR id (``civitai:4201@130072``), a URL or a
    Windows path keep their own colons."""
    head, sep, tail = text.rpartition(":")
    if sep and head:
        try:
            return head, float(tail)
        except ValueError:
            pass
    return text, None


def _lora(text: str) -> Lora:
    """``MODEL[:WEIGHT]``: an AIR model id and a weight from 0 to 1 (default 1)."""
    model, weight = _split_weight(text)
    lora = Lora(model) if weight is None else Lora(model, weight)
    try:
        _validate.lora("lora", lora)
    except InvalidArgumentError as exc:
        raise argparse.ArgumentTypeError(str(exc).removeprefix("lora.")) from None
    return lora


def _controlnet(text: str) -> ControlNet:
    """``PREPROCESSOR:IMAGE[:WEIGHT]``; checked with the task's model when it is sent."""
    preprocessor, sep, rest = text.partition(":")
    guide, weight = _split_weight(rest)
    if not (sep and preprocessor and guide):
        raise argparse.ArgumentTypeError(
            f"expected PREPROCESSOR:IMAGE[:WEIGHT] such as canny:edges.png:0.8, got {text!r}"
        )
    if weight is None:
        return ControlNet(preprocessor, guide)
    return ControlNet(preprocessor, guide, weight)


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value >= 0:  # also rejects nan
        raise argparse.ArgumentTypeError(f"expected seconds >= 0, got {text!r}")
    return value


# -- output -----------------------------------------------------------------------------


def _progress_bar(total: int, *, unit: str = "image", desc: str = "generating") -> Any:
    """A tqdm bar on stderr when tqdm is installed and stderr is a terminal, else None.

    No bar for a single item: it would only flash.
    """
    if total < 2 or not sys.stderr.isatty():
        return None
    try:
        tqdm = importlib.import_module("tqdm")
    except ImportError:
        return None
    return tqdm.tqdm(total=total, unit=unit, desc=desc, file=sys.stderr)


def _image_record(image: Image, path: Path) -> dict[str, Any]:
    return {
        "path": str(path),
        "uuid": image.uuid,
        "url": image.url,
        "task_uuid": image.task_uuid,
        "nsfw": image.nsfw,
        "cost": image.cost,
        "alt_text": image.alt_text,
    }


def _output_folder(args: argparse.Namespace) -> Path:
    folder = Path(args.output)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CommandError(
            f"cannot create the output folder {str(folder)!r}: {exc.strerror or exc}",
            EXIT_CODES["failure"],
        ) from exc
    return folder


def _save(image: Image, folder: Path, timeout: float | None) -> Path:
    try:
        return image.save(folder, timeout=timeout)
    except OSError as exc:  # ConnectionFailedError is an OSError too: let it through
        if isinstance(exc, DiffusionMasterError):
            raise
        raise CommandError(
            f"cannot write into {str(folder)!r}: {exc.strerror or exc}", EXIT_CODES["failure"]
        ) from exc


def _save_images(args: argparse.Namespace, images: Iterator[Image], total: int) -> None:
    """Save each image as it arrives, printing its path (or, with --json, all at the end)."""
    folder = _output_folder(args)
    bar = _progress_bar(total)
    write: Callable[[str], None] = _print_line if bar is None else bar.write
    records = []
    try:
        for image in images:
            path = _save(image, folder, args.timeout)
            records.append(_image_record(image, path))
            if bar is not None:
                bar.update(1)
            if not args.json:
                write(str(path))
    finally:
        if bar is not None:
            bar.close()
    if args.json:
        _print_json({"images": records})


def _print_line(text: str) -> None:
    # Flushed at once: a pipeline reader gets each path as its image arrives, and a
    # closed pipe is noticed here, while the command can still stop cleanly.
    print(text, flush=True)


def _print_json(document: object) -> None:
    print(json.dumps(document, indent=2), flush=True)


# -- commands ---------------------------------------------------------------------------


@contextlib.contextmanager
def _client(args: argparse.Namespace) -> Iterator[Client]:
    """The client the options ask for: on an embedded emulator, or on --url / the service."""
    from .client import Client

    if args.emulator:
        if args.url is not None:
            raise CommandError("--emulator and --url exclude each other", EXIT_CODES["usage"])
        _need_emulator()
        from .testing import Emulator

        with (
            Emulator(api_keys=[EMULATOR_KEY]) as emulator,
            Client(EMULATOR_KEY, url=emulator.url, timeout=args.timeout) as client,
        ):
            yield client
        return
    key = args.api_key if args.api_key is not None else os.environ.get(API_KEY_VARIABLE)
    if not key:
        raise CommandError(
            f"no API key: pass --api-key, set {API_KEY_VARIABLE}, or use --emulator",
            EXIT_CODES["usage"],
        )
    with Client(key, url=args.url, timeout=args.timeout) as client:
        yield client


def _generation_options(args: argparse.Namespace) -> dict[str, Any]:
    options: dict[str, Any] = {"number_results": args.number}
    for name, value in (
        ("size", args.size),
        ("model", args.model),
        ("seed", args.seed),
        ("negative_prompt", args.negative),
        ("steps", args.steps),
        ("guidance", args.guidance),
        ("scheduler", args.scheduler),
        ("style", args.style),
        ("lora", args.lora),
        ("controlnet", args.controlnet),
    ):
        if value is not None:
            options[name] = value
    if args.return_base64:
        options["return_base64"] = True
    return options


def _generate(args: argparse.Namespace) -> int:
    with _client(args) as client:
        images = client.stream_images(args.prompt, **_generation_options(args))
        _save_images(args, images, args.number)
    return 0


def _img2img(args: argparse.Namespace) -> int:
    with _client(args) as client:
        images = client.stream_images(args.prompt, image=args.image, **_generation_options(args))
        _save_images(args, images, args.number)
    return 0


def _inpaint(args: argparse.Namespace) -> int:
    with _client(args) as client:
        images = client.stream_images(
            args.prompt, image=args.image, mask=args.mask, **_generation_options(args)
        )
        _save_images(args, images, args.number)
    return 0


def _preprocess(args: argparse.Namespace) -> int:
    with _client(args) as client:
        image = client.preprocess_controlnet(
            args.image, args.preprocessor, width=args.width, height=args.height,
            low_threshold_canny=args.low_threshold, high_threshold_canny=args.high_threshold,
            include_hands_and_face=args.hands_and_face or None, mask=args.mask,
        )  # fmt: skip
        _save_images(args, iter([image]), 1)
    return 0


def _upscale(args: argparse.Namespace) -> int:
    with _client(args) as client:
        image = client.upscale(args.image, args.factor)
        _save_images(args, iter([image]), 1)
    return 0


def _remove_bg(args: argparse.Namespace) -> int:
    with _client(args) as client:
        image = client.remove_background(args.image)
        _save_images(args, iter([image]), 1)
    return 0


def _caption(args: argparse.Namespace) -> int:
    with _client(args) as client:
        text = client.image2text(args.image)
    if args.json:
        _print_json({"text": text})
    else:
        print(text)
    return 0


def _enhance(args: argparse.Namespace) -> int:
    with _client(args) as client:
        texts = client.enhance_prompt(
            args.prompt, versions=args.versions, max_length=args.max_length
        )
    if args.json:
        _print_json({"texts": texts})
    else:
        for text in texts:
            print(text)
    return 0


def _upload(args: argparse.Namespace) -> int:
    with _client(args) as client:
        uploaded = client.upload_image(args.image)
    if args.json:
        _print_json({"uuid": uploaded.uuid, "url": uploaded.url, "task_uuid": uploaded.task_uuid})
    else:
        print(uploaded.uuid)
    return 0


def _demo(args: argparse.Namespace) -> int:
    _need_emulator()
    from . import Client
    from .testing import Emulator

    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    with (
        Emulator(api_keys=[DEMO_KEY], images_per_frame=2) as emulator,
        Client(DEMO_KEY, url=emulator.url) as client,
    ):
        images = client.text2img(args.prompt, number_results=args.number, seed=42)
        for image in images:
            _print_line(str(image.save(out / image.uuid)))
    print(DEMO_NOTE, file=sys.stderr)
    return 0


def _emulator(args: argparse.Namespace) -> int:
    _need_emulator()
    from .testing import serve_forever

    if args.emulator_keys:
        keys = args.emulator_keys
    elif args.api_key:
        keys = [args.api_key]
    else:
        keys = ["test-key"]

    def ready(emulator: Any) -> None:
        print(f"emulator on {emulator.url} (keys: {', '.join(keys)})")
        print("Ctrl-C to stop", flush=True)

    try:
        serve_forever(args.port, keys, host=args.host, on_ready=ready)
    except BrokenPipeError:
        raise
    except OSError as exc:
        raise CommandError(
            f"cannot listen on {args.host}:{args.port}: "
            + (os.strerror(exc.errno) if exc.errno else str(exc)),
            EXIT_CODES["failure"],
        ) from exc
    return 0


# -- parser -----------------------------------------------------------------------------


def _common_options(parser: argparse.ArgumentParser, default: Callable[[Any], Any]) -> None:
    """The options every command accepts, before or after its name.

    The main parser holds the real defaults; the commands' copies default to
    SUPPRESS so that they only override what was given on the command line.
    """
    parser.add_argument(
        "-v",
        "--verbose",
        action="count",
        default=default(0),
        help="log to stderr: -v the connection and session (INFO), -vv each task too "
        "(DEBUG), -vvv the embedded emulator's records as well",
    )


def _client_options(parser: argparse.ArgumentParser, default: Callable[[Any], Any]) -> None:
    parser.add_argument(
        "--api-key",
        default=default(None),
        metavar="KEY",
        help=f"the API key (default: the {API_KEY_VARIABLE} variable)",
    )
    parser.add_argument(
        "--url",
        default=default(None),
        help="the WebSocket URL of the service, ws:// or wss:// (default: the "
        "DIFFUSIONMASTER_URL variable, else the production service)",
    )
    parser.add_argument(
        "--emulator",
        action="store_true",
        default=default(False),
        help="run against an embedded emulator (no key, no network)",
    )
    parser.add_argument(
        "--timeout",
        type=_seconds,
        default=default(120.0),
        metavar="SECONDS",
        help="deadline of the request (default: 120)",
    )
    parser.add_argument(
        "--json",
        action="store_true",
        default=default(False),
        help="print the results as one JSON object",
    )


def _names(table: Any) -> str:
    return ", ".join(member.name for member in table)


def _generation_arguments(parser: argparse.ArgumentParser) -> None:
    defaults = generation.DEFAULTS
    width, height = tables.SIZES[defaults["size"]]
    model = tables.Model(defaults["model"])
    parser.add_argument("-n", "--number", type=int, default=1, metavar="N", help="how many images")
    parser.add_argument(
        "--size",
        type=_size,
        metavar="WxH",
        help="WIDTHxHEIGHT from the size table ("
        + ", ".join(f"{w}x{h}" for w, h in tables.SIZES.values())
        + f"), or a sizeId (default: {width}x{height})",
    )
    parser.add_argument(
        "--model",
        type=_model,
        metavar="MODEL",
        help=f"a model name ({_names(tables.Model)}), its id, or an AIR id like "
        f"civitai:4201@130072 (default: {model.name}, id {int(model)})",
    )
    parser.add_argument("--seed", type=int, help="seed of the first image, >= 1 (default: random)")
    parser.add_argument("--negative", metavar="TEXT", help="what to avoid")
    parser.add_argument(
        "--steps",
        type=int,
        metavar="N",
        help=f"inference steps, 1 to 1000 (default: the server's, {_validate.DEFAULT_STEPS})",
    )
    parser.add_argument(
        "--guidance",
        type=float,
        metavar="SCALE",
        help="guidance scale, 0 to 10 (default: the server's, 7.5)",
    )
    parser.add_argument(
        "--scheduler",
        type=_scheduler,
        metavar="NAME",
        help="a scheduler name such as DPMPP_2M_KARRAS or EULER_ANCESTRAL_DISCRETE, or its "
        "id (default: the model's own); a wrong name lists them all",
    )
    parser.add_argument(
        "--style",
        type=_style,
        metavar="NAME",
        help=f"a style name ({_names(tables.Style)}) or its id (default: none)",
    )
    parser.add_argument(
        "--lora",
        type=_lora,
        action="append",
        metavar="MODEL[:WEIGHT]",
        help="apply a LoRA: its AIR id and a weight from 0 to 1 (default weight: 1); "
        "repeatable, e.g. --lora civitai:132942@146296:0.7",
    )
    parser.add_argument(
        "--controlnet",
        type=_controlnet,
        action="append",
        metavar="PREPROCESSOR:IMAGE[:WEIGHT]",
        help="guide with a ControlNet: a preprocessor name (canny, depth_midas, openpose, "
        "...), a guide image (a file, an image UUID or an http(s) URL, e.g. the output of "
        "the preprocess command) and a weight from 0 to 1 (default weight: 1); repeatable",
    )
    parser.add_argument(
        "--return-base64",
        action="store_true",
        help="deliver each image inside its result instead of by a download",
    )
    _output_argument(parser)


def _output_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-o", "--output", default=".", metavar="DIR", help="output folder")


def _epilog() -> str:
    rows = (
        textwrap.fill(text, 78, initial_indent=f"  {code:<4} ", subsequent_indent=" " * 7)
        for _, code, text in _EXIT_TABLE
    )
    return "exit codes:\n" + "\n".join(rows)


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="diffusionmaster",
        description="DiffusionMaster image generation from the shell.",
        epilog=_epilog(),
    )

    from . import __version__

    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")

    def keep(value: Any) -> Any:
        return value

    def suppress(value: Any) -> Any:
        return argparse.SUPPRESS

    _common_options(parser, keep)
    _client_options(parser, keep)
    common = _Parser(add_help=False)
    _common_options(common, suppress)
    with_client = _Parser(add_help=False)
    _common_options(with_client, suppress)
    _client_options(with_client, suppress)

    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    def command(
        name: str, run: Callable[[argparse.Namespace], int], help: str, *, client: bool
    ) -> argparse.ArgumentParser:
        sub = commands.add_parser(
            name,
            help=help,
            description=help,
            epilog=_epilog(),
            parents=[with_client if client else common],
        )
        sub.set_defaults(run=run)
        parser: argparse.ArgumentParser = sub
        return parser

    sub = command("generate", _generate, "generate images from a prompt", client=True)
    sub.add_argument("prompt", help="what to draw")
    _generation_arguments(sub)

    sub = command("img2img", _img2img, "generate images from a prompt and an image", client=True)
    sub.add_argument("prompt", help="what to draw")
    sub.add_argument("image", help="the initial image: a file or an image UUID")
    _generation_arguments(sub)

    sub = command("inpaint", _inpaint, "repaint the masked part of an image", client=True)
    sub.add_argument("prompt", help="what to draw in the masked area")
    sub.add_argument("image", help="the image to edit: a file or an image UUID")
    sub.add_argument("mask", help="the mask (white areas are repainted): a file or an image UUID")
    _generation_arguments(sub)

    sub = command(
        "preprocess",
        _preprocess,
        "turn an image into a ControlNet guide image (for generate --controlnet)",
        client=True,
    )
    sub.add_argument("image", help="the source image: a file or an image UUID")
    sub.add_argument("preprocessor", help="one of " + ", ".join(sorted(tables.PREPROCESSOR_TYPES)))
    sub.add_argument(
        "--width", type=int, metavar="W", help="output width, 1 to 2048 (default: the source's)"
    )
    sub.add_argument(
        "--height", type=int, metavar="H", help="output height, 1 to 2048 (default: the source's)"
    )
    sub.add_argument("--low-threshold", type=int, metavar="N", help="canny: low threshold, 0-255")
    sub.add_argument("--high-threshold", type=int, metavar="N", help="canny: high threshold, 0-255")
    sub.add_argument(
        "--hands-and-face", action="store_true", help="openpose: detect hands and faces too"
    )
    sub.add_argument("--mask", help="a mask image: a file or an image UUID")
    _output_argument(sub)

    sub = command("upscale", _upscale, "upscale an image", client=True)
    sub.add_argument("image", help="a file or an image UUID")
    sub.add_argument("--factor", type=int, default=2, help="2, 3 or 4")
    _output_argument(sub)

    sub = command("remove-bg", _remove_bg, "remove the background of an image", client=True)
    sub.add_argument("image", help="a file or an image UUID")
    _output_argument(sub)

    sub = command("caption", _caption, "describe an image in words", client=True)
    sub.add_argument("image", help="a file or an image UUID")

    sub = command("enhance", _enhance, "print enriched versions of a prompt", client=True)
    sub.add_argument("prompt", help="the prompt to enhance")
    sub.add_argument("--versions", type=int, default=1, help="how many versions, 1 to 5")
    sub.add_argument("--max-length", type=int, default=380, help="longest version, 1 to 380")

    sub = command("upload", _upload, "upload an image and print its UUID", client=True)
    sub.add_argument("image", help="a PNG, JPEG or WEBP file")

    sub = command(
        "demo",
        _demo,
        "generate placeholder images on an embedded emulator (no key, no network)",
        client=False,
    )
    sub.add_argument(
        "--prompt", default="a lighthouse on a cliff at dawn, oil painting", help="what to draw"
    )
    sub.add_argument("-n", "--number", type=int, default=4, help="how many images")
    sub.add_argument("-o", "--output", default="diffusionmaster-demo", help="output folder")

    from . import batchrun

    batchrun.add_parser(command)

    sub = command("emulator", _emulator, "run the emulator server", client=False)
    sub.add_argument("--port", type=int, default=8765, help="the TCP port; 0 picks a free one")
    sub.add_argument("--host", default="127.0.0.1", help="the address to listen on")
    sub.add_argument(
        "--api-key",
        dest="emulator_keys",
        action="append",
        metavar="KEY",
        help="accepted key (repeatable; default: test-key)",
    )
    return parser


# -- main -------------------------------------------------------------------------------


def _quiet_emulator(record: logging.LogRecord) -> bool:
    return record.levelno >= logging.WARNING or not record.name.startswith(
        "diffusionmaster.testing"
    )


@contextlib.contextmanager
def _logging(verbosity: int, stream: IO[str]) -> Iterator[None]:
    """Route the library's log records for the duration of one command.

    Quiet by default: a NullHandler keeps Python's last-resort handler from printing
    warnings next to the one-line error. ``-v`` logs INFO, ``-vv`` DEBUG, on stderr: the
    client's own work. The embedded emulator (``--emulator``, ``demo``) logs its
    warnings only, unless ``-vvv`` asks for its INFO and DEBUG records too.
    """
    logger = logging.getLogger("diffusionmaster")
    handler: logging.Handler
    if verbosity:
        handler = logging.StreamHandler(stream)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        if verbosity < 3:
            handler.addFilter(_quiet_emulator)
    else:
        handler = logging.NullHandler()
    old_level = logger.level
    logger.addHandler(handler)
    if verbosity:
        logger.setLevel(logging.DEBUG if verbosity > 1 else logging.INFO)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)


def _flag(parameter: str) -> str:
    """The command line's name of a library parameter (``controlnet[0].weight`` ->
    ``--controlnet[0].weight``)."""
    base, sep, rest = parameter.partition("[")
    return _FLAGS.get(base, base) + sep + rest


def _describe(exc: DiffusionMasterError) -> tuple[int, str]:
    """The exit code and the one-line message of a library exception."""
    if isinstance(exc, InvalidArgumentError):
        detail = str(exc).removeprefix(f"{exc.parameter}: ")
        return EXIT_CODES["usage"], f"invalid argument {_flag(exc.parameter)}: {detail}"
    for kind, code, label in _FAILURES:
        if isinstance(exc, kind):
            return code, f"{label}: {exc}"
    return EXIT_CODES["failure"], f"{type(exc).__name__}: {exc}"


def _error_details(exc: BaseException | None) -> dict[str, Any]:
    """What a library exception tells a program besides its message (for --json)."""
    details: dict[str, Any] = {}
    if exc is None:
        return details
    details["type"] = type(exc).__name__
    if isinstance(exc, InvalidArgumentError):
        details["parameter"] = _flag(exc.parameter)
    for name in ("task_uuid", "error_id", "task_uuids", "url", "status"):
        value = getattr(exc, name, None)
        if value is not None:
            details[name] = list(value) if isinstance(value, tuple) else value
    return details


def _fail(
    message: str, code: int, *, as_json: bool = False, exc: BaseException | None = None
) -> int:
    """Report an expected failure: one line on stderr (and, with --json, an error object
    on stdout for the program that reads it); return the exit code."""
    message = " ".join(message.split())
    print("diffusionmaster: error: " + message, file=sys.stderr)
    if as_json:
        kind = next((name for name, value in EXIT_CODES.items() if value == code), "failure")
        error = {"exit_code": code, "kind": kind, "message": message, **_error_details(exc)}
        with contextlib.suppress(BrokenPipeError):
            _print_json({"error": error})
    return code


def _output_closed() -> int:
    """The reader of stdout went away (``| head``): end quietly with the shell's code for
    a program ended by SIGPIPE, and point stdout at /dev/null so that the interpreter's
    last flush cannot fail again (the recipe of the Python docs, "Note on SIGPIPE")."""
    with contextlib.suppress(OSError, ValueError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    return EXIT_CODES["output_closed"]


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit code (see :data:`EXIT_CODES`).

    Args:
        argv: the arguments without the program name (default: ``sys.argv[1:]``).

    Returns:
        0 on success; expected failures print one line to stderr and return
        their code instead of raising.
    """
    try:
        code = _main(sys.argv[1:] if argv is None else list(argv))
        sys.stdout.flush()  # now, while a closed pipe can still be reported as such
    except BrokenPipeError:
        return _output_closed()
    return code


def _main(argv: list[str]) -> int:
    try:
        args = _parser().parse_args(argv)
    except CommandError as exc:
        return _fail(str(exc), exc.code, as_json="--json" in argv)
    except SystemExit as exc:  # --help, --version
        return exc.code if isinstance(exc.code, int) else 0
    as_json = bool(getattr(args, "json", False))
    with _logging(args.verbose, sys.stderr):
        try:
            code: int = args.run(args)
        except CommandError as exc:
            return _fail(str(exc), exc.code, as_json=as_json, exc=exc.__cause__)
        except DiffusionMasterError as exc:
            code, message = _describe(exc)
            return _fail(message, code, as_json=as_json, exc=exc)
        except KeyboardInterrupt:
            return _fail("interrupted", EXIT_CODES["interrupted"], as_json=as_json)
    return code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
