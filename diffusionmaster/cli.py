"""The ``diffusionmaster`` command line (also ``python -m diffusionmaster``).

Commands::

    diffusionmaster generate PROMPT [-n N] [--size WxH] [--model ID] [--seed S]
                                    [--negative TEXT] [-o DIR]
    diffusionmaster img2img PROMPT IMAGE [the options of generate]
    diffusionmaster upscale IMAGE [--factor 2|3|4] [-o DIR]
    diffusionmaster remove-bg IMAGE [-o DIR]
    diffusionmaster caption IMAGE
    diffusionmaster enhance PROMPT [--versions N] [--max-length N]
    diffusionmaster upload IMAGE
    diffusionmaster emulator [--port P] [--host H] [--api-key KEY ...]
    diffusionmaster demo [--prompt TEXT] [-n N] [-o DIR]

Every command that talks to the service takes ``--api-key KEY`` (default: the
``DIFFUSIONMASTER_API_KEY`` variable), ``--url URL``, ``--emulator`` (run against
an embedded emulator: no key, no network), ``--timeout SECONDS``, ``--json`` and
``-v``/``--verbose``. An IMAGE is a file path or the UUID of an image on the server.

Images are saved under ``-o DIR`` (default: the current directory) as
``<uuid>.<ext>`` and their paths printed one per line as they arrive. ``--json``
prints one JSON object instead. While several images are generated a progress
bar is drawn on stderr when tqdm is installed (the ``progress`` extra) and
stderr is a terminal.

Expected failures print one line, ``diffusionmaster: error: ...``, to stderr
and exit with a code that says what went wrong (see :data:`EXIT_CODES`).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import logging
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, NoReturn

from .errors import (
    AuthenticationError,
    ConnectionFailedError,
    DiffusionMasterError,
    InvalidArgumentError,
    RequestTimeoutError,
    SessionExpiredError,
    TaskError,
)

if TYPE_CHECKING:
    from .client import Client
    from .models import Image

__all__ = ["EXIT_CODES", "main"]

DEMO_KEY = "demo-key"
EMULATOR_KEY = "emulator-key"
API_KEY_VARIABLE = "DIFFUSIONMASTER_API_KEY"

#: The exit codes of the command line, by meaning.
EXIT_CODES = {
    "ok": 0,
    "failure": 1,  # anything else: an unreadable answer, an unwritable output folder...
    "usage": 2,  # a bad command line or argument, or no API key; nothing was sent
    "authentication": 3,  # the server refused the API key
    "connection": 4,  # the server could not be reached, or the connection was lost for good
    "timeout": 5,  # --timeout passed before the results arrived
    "session_expired": 6,  # the connection came back but the server had lost the results
    "task": 7,  # the server reported an error for the task
    "interrupted": 130,  # Ctrl-C
}

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
    "number_results": "-n/--number",
    "size": "--size",
    "model": "--model",
    "seed": "--seed",
    "negative_prompt": "--negative",
    "factor": "--factor",
    "versions": "--versions",
    "max_length": "--max-length",
    "timeout": "--timeout",
}


class CommandError(Exception):
    """An expected failure of a command: its one-line message and exit code."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors are one line (and exit code 2)."""

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


def _size(text: str) -> tuple[int, int] | int:
    """``WxH`` (e.g. ``512x768``) or a ``sizeId``."""
    if text.isdigit():
        return int(text)
    width, sep, height = text.lower().partition("x")
    if not (sep and width.isdigit() and height.isdigit()):
        raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT such as 512x768, got {text!r}")
    return int(width), int(height)


def _model(text: str) -> int | str:
    """A model id of the table, or an AIR string such as ``civitai:4201@130072``."""
    return int(text) if text.isdigit() else text


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value >= 0:  # also rejects nan
        raise argparse.ArgumentTypeError(f"expected seconds >= 0, got {text!r}")
    return value


# -- output -----------------------------------------------------------------------------


def _progress_bar(total: int) -> Any:
    """A tqdm bar on stderr when tqdm is installed and stderr is a terminal, else None."""
    if total < 2 or not sys.stderr.isatty():
        return None
    try:
        tqdm = importlib.import_module("tqdm")
    except ImportError:
        return None
    return tqdm.tqdm(total=total, unit="image", desc="generating", file=sys.stderr)


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
    write: Callable[[str], None] = print if bar is None else bar.write
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


def _print_json(document: object) -> None:
    print(json.dumps(document, indent=2))


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
    ):
        if value is not None:
            options[name] = value
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
            print(image.save(out / image.uuid))
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

    serve_forever(args.port, keys, host=args.host, on_ready=ready)
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
        help="log to stderr (-v: INFO, -vv: DEBUG)",
    )


def _client_options(parser: argparse.ArgumentParser, default: Callable[[Any], Any]) -> None:
    parser.add_argument(
        "--api-key",
        default=default(None),
        metavar="KEY",
        help=f"the API key (default: the {API_KEY_VARIABLE} variable)",
    )
    parser.add_argument("--url", default=default(None), help="the WebSocket URL of the service")
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


def _generation_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-n", "--number", type=int, default=1, help="how many images")
    parser.add_argument("--size", type=_size, help="WIDTHxHEIGHT from the size table, or sizeId")
    parser.add_argument("--model", type=_model, help="model id, or AIR like civitai:4201@130072")
    parser.add_argument("--seed", type=int, help="seed of the first image (>= 1)")
    parser.add_argument("--negative", metavar="TEXT", help="what to avoid")
    _output_argument(parser)


def _output_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-o", "--output", default=".", metavar="DIR", help="output folder")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="diffusionmaster",
        description="DiffusionMaster image generation from the shell.",
        epilog="exit codes: 0 ok, 1 other failure, 2 bad usage or argument, 3 key refused, "
        "4 connection failed, 5 timeout, 6 session expired, 7 task error, 130 interrupted",
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
            name, help=help, description=help, parents=[with_client if client else common]
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

    sub = command("upscale", _upscale, "upscale an image", client=True)
    sub.add_argument("image", help="a file or an image UUID")
    sub.add_argument("--factor", type=int, default=2, help="2, 3 or 4 (default: 2)")
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

    sub = command("demo", _demo, "generate images against an embedded emulator", client=False)
    sub.add_argument("--prompt", default="a lighthouse on a cliff at dawn, oil painting")
    sub.add_argument("-n", "--number", type=int, default=4, help="how many images")
    sub.add_argument("-o", "--output", default="diffusionmaster-demo", help="output folder")

    from . import batchrun

    batchrun.add_parser(command)

    sub = command("emulator", _emulator, "run the emulator server", client=False)
    sub.add_argument("--port", type=int, default=8765, help="0 picks a free port")
    sub.add_argument("--host", default="127.0.0.1")
    sub.add_argument(
        "--api-key",
        dest="emulator_keys",
        action="append",
        metavar="KEY",
        help="accepted key (repeatable; default: test-key)",
    )
    return parser


# -- main -------------------------------------------------------------------------------


@contextlib.contextmanager
def _logging(verbosity: int, stream: IO[str]) -> Iterator[None]:
    """Route the library's log records for the duration of one command.

    Quiet by default: a NullHandler keeps Python's last-resort handler from printing
    warnings next to the one-line error. ``-v`` logs INFO, ``-vv`` DEBUG, on stderr.
    """
    logger = logging.getLogger("diffusionmaster")
    handler: logging.Handler
    if verbosity:
        handler = logging.StreamHandler(stream)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
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


def _describe(exc: DiffusionMasterError) -> tuple[int, str]:
    """The exit code and the one-line message of a library exception."""
    if isinstance(exc, InvalidArgumentError):
        flag = _FLAGS.get(exc.parameter, exc.parameter)
        detail = str(exc).removeprefix(f"{exc.parameter}: ")
        return EXIT_CODES["usage"], f"invalid argument {flag}: {detail}"
    for kind, code, label in _FAILURES:
        if isinstance(exc, kind):
            return code, f"{label}: {exc}"
    return EXIT_CODES["failure"], f"{type(exc).__name__}: {exc}"


def _fail(message: str) -> None:
    print("diffusionmaster: error: " + " ".join(message.split()), file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit code (see :data:`EXIT_CODES`).

    Args:
        argv: the arguments without the program name (default: ``sys.argv[1:]``).

    Returns:
        0 on success; expected failures print one line to stderr and return
        their code instead of raising.
    """
    try:
        args = _parser().parse_args(argv)
    except CommandError as exc:
        _fail(str(exc))
        return exc.code
    except SystemExit as exc:  # --help
        return exc.code if isinstance(exc.code, int) else 0
    with _logging(args.verbose, sys.stderr):
        try:
            code: int = args.run(args)
        except CommandError as exc:
            _fail(str(exc))
            return exc.code
        except DiffusionMasterError as exc:
            code, message = _describe(exc)
            _fail(message)
            return code
        except KeyboardInterrupt:
            _fail("interrupted")
            return EXIT_CODES["interrupted"]
    return code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
