"""A client created before fork(), used in the children (gunicorn --preload, Celery).

The child cannot share the parent's socket: on its first call there, the client
drops what it inherited and connects with a new session of its own.

    python examples/prefork.py
"""

from __future__ import annotations

import multiprocessing
import os

from _connect import connect


def work(prompt: str) -> tuple[int, str | None, str]:
    (image,) = client.text2img(prompt)
    return os.getpid(), client.session_uuid, image.uuid


if __name__ == "__main__":
    with connect() as client:
        client.text2img("warm-up in the parent")
        parent_session = client.session_uuid
        with multiprocessing.get_context("fork").Pool(2) as pool:
            for pid, session, image_uuid in pool.map(work, ["a", "b", "c", "d"]):
                assert session != parent_session and pid != os.getpid()
                print(f"child {pid}: session {session}, image {image_uuid}")
        print(f"parent {os.getpid()}: session {parent_session}")
