"""The ``diffusionmaster`` command line.

``diffusionmaster demo`` generates a few images against an embedded emulator (no
key, no network) and saves them under ``./diffusionmaster-demo/``;
``diffusionmaster emulator`` runs the emulator as a server.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

__all__ = ["main"]

DEMO_KEY = "demo-key"


def _need_emulator() -> None:
    try:
        import PIL  # noqa: F401
        import websockets  # noqa: F401
    except ImportError as exc:
        raise SystemExit(
            f"this command needs the emulator extra ({exc.name} is missing): "
            'python -m pip install "diffusionmaster[emulator]"'
        ) from exc


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

    print(f"emulator on ws://{args.host}:{args.port}/v1/ (keys: {', '.join(args.api_key)})")
    print("Ctrl-C to stop", flush=True)
    serve_forever(args.port, args.api_key, host=args.host)
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="diffusionmaster", description="DiffusionMaster image generation from the shell."
    )
    commands = parser.add_subparsers(dest="command", required=True)

    demo = commands.add_parser("demo", help="generate images against an embedded emulator")
    demo.add_argument("--prompt", default="a lighthouse on a cliff at dawn, oil painting")
    demo.add_argument("-n", "--number", type=int, default=4, help="how many images")
    demo.add_argument("-o", "--output", default="diffusionmaster-demo", help="output folder")
    demo.set_defaults(run=_demo)

    emu = commands.add_parser("emulator", help="run the emulator server")
    emu.add_argument("--port", type=int, default=8765)
    emu.add_argument("--host", default="127.0.0.1")
    emu.add_argument("--api-key", action="append", default=None, help="accepted key (repeatable)")
    emu.set_defaults(run=_emulator)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit code."""
    args = _parser().parse_args(argv)
    if getattr(args, "api_key", "") is None:
        args.api_key = ["test-key"]
    code: int = args.run(args)
    return code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
