"""Celery tasks that generate images, with one DiffusionMaster client per worker process.

Run a Redis broker, an emulator (or set ``DIFFUSIONMASTER_API_KEY`` for the real
service, and leave ``DIFFUSIONMASTER_URL`` unset), a worker, then send tasks::

    redis-server --port 6379 --save ''                                  # the broker
    diffusionmaster emulator --port 8765 --api-key example-key          # the server
    cd examples
    export DIFFUSIONMASTER_URL=ws://127.0.0.1:8765/v1/ DIFFUSIONMASTER_API_KEY=example-key
    celery -A celery_app worker --pool=prefork --concurrency=4 --loglevel=INFO
    python -m celery_app "a lighthouse at dawn" "a kite over the sea"   # the producer

``CELERY_BROKER_URL`` and ``CELERY_RESULT_BACKEND`` pick the broker and the result
store (default: Redis on 127.0.0.1:6379, database 0).

**One client per worker process.** The prefork pool forks its processes from the
worker's main process, which never makes a client: each pool process makes its own
on its first task (:func:`client`), keeps it for every later task (a client is
thread-safe and reconnects by itself), and closes it when the process exits
(``worker_process_shutdown``; ``worker_shutdown`` for the ``threads`` and ``solo``
pools, whose tasks run in the main process and share its one client). Connecting
in ``worker_process_init`` would work too, but Celery kills a pool process whose
init takes over 4 seconds.

**Results travel as dicts.** A task returns ``Image.to_dict()`` for each image,
JSON that Celery's default serialiser carries; the producer rebuilds each image
with ``Image.from_dict()``. With ``include_data=True`` the worker downloads the
image and the dict carries its bytes (base64, a third larger than the file);
otherwise the producer downloads it from its URL when it reads it.

**Errors.** A task whose call raises (``TaskError``, ``RequestTimeoutError``...) fails,
and ``result.get()`` raises at the producer. Celery's JSON serialiser keeps only an
exception's type name and arguments, and rebuilds it as a plain ``Exception`` when
the type cannot be made from them, as is the case of the library's: its message
names the type and carries the task UUID, error id and server message. (The
library's exceptions do pickle: with a pickle result serialiser, on a broker you
trust, they arrive as themselves.)

**Billing and redelivery.** Every task sent to the server is generated and billed.
This app keeps Celery's default, early acknowledgement (``task_acks_late=False``):
the broker forgets a task as a worker starts it, so a worker killed mid-task loses
that task rather than running it twice. With ``task_acks_late=True`` a task
is acknowledged only when it ends: if its worker is killed or its machine stops
(or, with ``task_reject_on_worker_lost=True``, its pool process dies), the broker
delivers it again, and on Redis so does a task still running when the visibility
timeout (one hour by default) passes. **A redelivered task generates, and is
billed, a second time.** (On Redis, a task with an ETA or countdown further away
than the visibility timeout is redelivered too, with or without ``acks_late``.)
Turn ``acks_late`` on only if a lost task costs you more than a paid duplicate.
"""

from __future__ import annotations

import logging
import os
import threading
from typing import Any

from celery import Celery
from celery.signals import worker_process_shutdown, worker_shutdown

from diffusionmaster import Client

__all__ = ["app", "client", "text2img"]

logger = logging.getLogger("celery_app")

_REDIS = "redis://127.0.0.1:6379/0"

app = Celery(
    "celery_app",
    broker=os.environ.get("CELERY_BROKER_URL", _REDIS),
    backend=os.environ.get("CELERY_RESULT_BACKEND", _REDIS),
)
app.conf.update(
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
    # The default, spelled out: see "Billing and redelivery" above.
    task_acks_late=False,
    # A generation takes seconds: a process reserves one task at a time, so a long
    # one does not hold others back while another process is free.
    worker_prefetch_multiplier=1,
)

_client: Client | None = None
_client_lock = threading.Lock()


def client() -> Client:
    """This process's client, connected on first use (reads ``DIFFUSIONMASTER_API_KEY``
    and ``DIFFUSIONMASTER_URL``)."""
    global _client
    with _client_lock:
        if _client is None:
            _client = Client(timeout=120.0)
            logger.info("process %d: connected, session %s", os.getpid(), _client.session_uuid)
        return _client


@worker_process_shutdown.connect  # a prefork pool process exits
@worker_shutdown.connect  # the worker stops (the solo and threads pools run tasks in it)
def _close_client(**_: Any) -> None:
    """Close this process's client, if it made one."""
    global _client
    with _client_lock:
        if _client is not None:
            _client.close()
            _client = None
            logger.info("process %d: client closed", os.getpid())


@app.task(name="celery_app.text2img")
def text2img(prompt: str, include_data: bool = False, **options: Any) -> list[dict[str, Any]]:
    """Generate images from ``prompt``; return each image's dict (``Image.to_dict``).

    Args:
        prompt: what to draw.
        include_data: put each image's bytes (base64) in its dict: the worker downloads them.
        **options: JSON-able options of ``Client.text2img`` (``seed``, ``number_results``,
            ``size`` as ``[width, height]``, ...).
    """
    if isinstance(options.get("size"), list):
        options["size"] = tuple(options["size"])  # JSON has no tuples
    images = client().text2img(prompt, **options)
    return [image.to_dict(include_data=include_data) for image in images]
