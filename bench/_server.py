"""The benchmark's emulator, in a process of its own (``python -m bench._server``).

Run in its own process so that the server's CPU (and its hold on a GIL) never
counts against the side being measured, and so that both sides of a comparison
talk to the very same server. Started by :class:`bench._common.EmulatorProcess`.

Protocol on stdin/stdout, one line each way:

- at start it prints ``ready <ws url>``;
- then for each command line it prints ``ok [value]`` or ``error <message>``:
  ``drop`` (abort every connection), ``withhold`` / ``release`` (hold / send result
  frames), ``drop_release`` (both, in that order), ``wait_buffered N SECONDS``
  (until N result frames wait in session buffers), ``clear`` (forget the recorded
  frames, so a long run does not grow the server), ``image_bytes N``, ``cpu``
  (this process's CPU seconds), ``quit``.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time

from diffusionmaster.testing import Emulator

API_KEY = "bench-key"


def _buffered(emu: Emulator) -> int:
    return sum(s.buffered for s in emu.sessions.values())


def _handle(emu: Emulator, words: list[str]) -> str:
    command = words[0]
    if command == "drop":
        emu.drop_connections()
    elif command == "withhold":
        emu.withhold_frames()
    elif command == "release":
        emu.release_frames()
    elif command == "drop_release":
        emu.drop_connections()
        emu.release_frames()
    elif command == "wait_buffered":
        count, timeout = int(words[1]), float(words[2])
        if not emu.wait_for(lambda: _buffered(emu) >= count, timeout):
            return f"error {_buffered(emu)} frames buffered after {timeout} s"
    elif command == "clear":
        emu.clear_received()
    elif command == "latency":
        emu.latency = float(words[1])
    elif command == "image_bytes":
        emu.image_bytes = int(words[1])
    elif command == "cpu":
        return f"ok {time.process_time():.6f}"
    else:
        return f"error unknown command {command!r}"
    return "ok"


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench._server")
    parser.add_argument("--image-bytes", type=int, default=0)
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    # Zero latency: every result is produced as soon as its request is read.
    with Emulator(api_keys=[API_KEY], latency=0.0) as emu:
        emu.image_bytes = args.image_bytes
        print(f"ready {emu.url}", flush=True)
        for line in sys.stdin:
            words = line.split()
            if not words:
                continue
            if words[0] == "quit":
                break
            try:
                reply = _handle(emu, words)
            except Exception as exc:
                reply = f"error {type(exc).__name__}: {exc}"
            print(reply, flush=True)
    print("ok", flush=True)


if __name__ == "__main__":
    main()
