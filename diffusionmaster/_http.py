"""Downloads of result images (plain HTTP(S) GET, house rule 9), reusing connections.

A small pool of keep-alive ``http.client`` connections per (scheme, host, port);
thread-safe: each download takes a connection out of the pool and puts it back.
"""

from __future__ import annotations

import http.client
import threading
import urllib.parse
from collections import defaultdict

from .errors import ConnectionFailedError, RequestTimeoutError

__all__ = ["close_idle", "fetch"]

_MAX_IDLE_PER_HOST = 4
_pool: defaultdict[tuple[str, str, int | None], list[http.client.HTTPConnection]] = defaultdict(
    list
)
_pool_lock = threading.Lock()


def _new_connection(
    scheme: str, host: str, port: int | None, timeout: float | None
) -> http.client.HTTPConnection:
    if scheme == "https":
        return http.client.HTTPSConnection(host, port, timeout=timeout)
    return http.client.HTTPConnection(host, port, timeout=timeout)


def fetch(url: str, *, timeout: float | None = 60.0) -> tuple[bytes, str | None]:
    """GET ``url``; return (body, Content-Type).

    Raises:
        RequestTimeoutError: the server did not answer in time.
        ConnectionFailedError: the download failed (network error or non-2xx status).
    """
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConnectionFailedError(f"cannot download {url!r}: not an http(s) URL")
    key = (parts.scheme, parts.hostname, parts.port)
    target = parts.path or "/"
    if parts.query:
        target += "?" + parts.query
    # A pooled connection may have been closed by the server meanwhile: one retry on a
    # fresh connection covers that without hiding real failures.
    for attempt in range(2):
        with _pool_lock:
            idle = _pool[key]
            conn = idle.pop() if idle and attempt == 0 else None
        if conn is None:
            conn = _new_connection(parts.scheme, parts.hostname, parts.port, timeout)
        else:
            conn.timeout = timeout
            if conn.sock is not None:
                conn.sock.settimeout(timeout)
        try:
            conn.request("GET", target, headers={"Accept": "image/*"})
            response = conn.getresponse()
            body = response.read()
        except TimeoutError as exc:
            conn.close()
            raise RequestTimeoutError(f"download of {url} timed out") from exc
        except (OSError, http.client.HTTPException) as exc:
            conn.close()
            if attempt == 0:
                continue
            raise ConnectionFailedError(f"download of {url} failed: {exc}") from exc
        if response.status // 100 != 2:
            conn.close()
            raise ConnectionFailedError(f"download of {url} failed: HTTP {response.status}")
        keep = not response.will_close
        if keep:
            with _pool_lock:
                keep = len(_pool[key]) < _MAX_IDLE_PER_HOST
                if keep:
                    _pool[key].append(conn)
        if not keep:
            conn.close()
        return body, response.getheader("Content-Type")
    raise AssertionError("unreachable")  # pragma: no cover


def close_idle() -> None:
    """Close every idle pooled connection; later downloads open new ones."""
    with _pool_lock:
        idle = [conn for conns in _pool.values() for conn in conns]
        _pool.clear()
    for conn in idle:
        conn.close()
