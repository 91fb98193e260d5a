"""The reconnect guarantees, shown with the emulator's fault injection.

1. The connection drops while a task runs: the client resumes its session and
   the call still returns its images, each once.
2. The server forgets the session while a task waits: the call fails with
   SessionExpiredError (the task is not re-sent: it may have been billed).

    python examples/resume.py
"""

from __future__ import annotations

import logging

from diffusionmaster import Client, Reconnect, SessionExpiredError
from diffusionmaster.testing import Emulator

# The library logs reconnects at INFO and lost sessions at WARNING; show them.
logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
logging.getLogger("diffusionmaster.testing").setLevel(logging.WARNING)  # the server side

with (
    Emulator(api_keys=["k"]) as emulator,
    Client("k", url=emulator.url, reconnect=Reconnect(min_delay=0.05)) as client,
):
    # 1. Hold the results back, drop the connection, then let them go.
    emulator.withhold_frames()
    future = client.submit(client.text2img, "a lighthouse", number_results=3)
    assert emulator.wait_for(lambda: any(s.seen_tasks for s in emulator.sessions.values()), 5)
    session = client.session_uuid
    emulator.drop_connections()
    emulator.release_frames()
    images = future.result(timeout=30)
    assert client.session_uuid == session and len({i.uuid for i in images}) == 3
    print(f"resumed session {session}: {len(images)} images")

    # 2. The server forgets the session while the task waits.
    emulator.withhold_frames()
    future = client.submit(client.text2img, "a castle")
    assert emulator.wait_for(lambda: any(s.seen_tasks == 2 for s in emulator.sessions.values()), 5)
    emulator.expire_sessions()
    try:
        future.result(timeout=30)
    except SessionExpiredError as exc:
        print("session expired; lost tasks:", exc.task_uuids)
    emulator.release_frames()
    print("new session", client.session_uuid, "->", client.text2img("a new start")[0].uuid)
