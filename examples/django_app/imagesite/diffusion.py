"""One diffusionmaster client per process, shared by every request thread.

A :class:`~diffusionmaster.Client` is thread-safe and holds one WebSocket, so a
site needs exactly one per process: :func:`get_client` creates it on first use
(connecting at import time would slow every management command down and fail
when the service is briefly unreachable) and :func:`close_client` closes it, at
interpreter exit or when a test calls it.

Pre-fork servers (gunicorn ``--preload``, Celery's prefork pool): a client created
in the parent before ``fork()`` notices the fork on its first call in a child and
connects again there with a new session of its own; nothing to do here.
"""

from __future__ import annotations

import atexit
import threading

from django.conf import settings

from diffusionmaster import Client

_client: Client | None = None
_lock = threading.Lock()


def get_client() -> Client:
    """The process-wide client, created (and connected) on first use."""
    global _client
    client = _client  # fast path: once created, no lock is taken
    if client is None:
        with _lock:
            # Double-checked: another thread may have created it while this one waited.
            if _client is None:
                _client = Client(
                    settings.DIFFUSIONMASTER_API_KEY,
                    url=settings.DIFFUSIONMASTER_URL,
                    timeout=settings.DIFFUSIONMASTER_TIMEOUT,
                )
            client = _client
    return client


def close_client() -> None:
    """Close the shared client (if any); the next :func:`get_client` makes a new one."""
    global _client
    with _lock:
        client, _client = _client, None
    if client is not None:
        client.close()


atexit.register(close_client)
