"""Downloads of result images (plain HTTP(S) GET, house rule 9), reusing connections.

A :class:`Downloader` keeps a small pool of keep-alive ``http.client`` connections
per (scheme, host, port). Each :class:`~diffusionmaster.Client` owns one, closed by
``close()``; results keep a reference to the one that downloads them. Thread-safe:
each download takes a connection out of the pool and puts it back.

Fork safety: a pooled socket shared by a parent and its forked child would mix
their responses (one process reading the other's image bytes). In a forked child
every downloader forgets its pool (closing only the child's copies of the file
descriptors) and rebuilds its lock, through :func:`os.register_at_fork`, at the
moment the child has a single thread.
"""

from __future__ import annotations

import http.client
import os
import threading
import time
import urllib.parse
import weakref
from collections import defaultdict

from .errors import ConnectionFailedError, DownloadError, RequestTimeoutError

__all__ = ["Downloader", "default"]

_MAX_IDLE_PER_HOST = 4
#: The largest image body accepted (a 4x-upscaled PNG is well under this).
MAX_BODY = 256 * 1024 * 1024
_CHUNK = 1024 * 1024
_Key = tuple[str, str, int | None]
_LIVE: weakref.WeakSet[Downloader] = weakref.WeakSet()


def _new_connection(
    scheme: str, host: str, port: int | None, timeout: float | None
) -> http.client.HTTPConnection:
    if scheme == "https":
        return http.client.HTTPSConnection(host, port, timeout=timeout)
    return http.client.HTTPConnection(host, port, timeout=timeout)


class Downloader:
    """A pool of keep-alive HTTP(S) connections, owned by one client. Thread-safe."""

    def __init__(self) -> None:
        self._reset()
        _LIVE.add(self)

    def _reset(self) -> None:
        self._lock = threading.Lock()
        self._pool: defaultdict[_Key, list[http.client.HTTPConnection]] = defaultdict(list)

    def _after_fork_in_child(self) -> None:
        # The pooled sockets belong to the parent too: close our copies of their file
        # descriptors (no shutdown, which would cut the parent's), never reuse them.
        for conns in self._pool.values():
            for conn in conns:
                if conn.sock is not None:
                    conn.sock.close()
        self._reset()

    def fetch(self, url: str, *, timeout: float | None = 60.0) -> tuple[bytes, str | None]:
        """GET ``url``; return (body, Content-Type).

        Raises:
            RequestTimeoutError: the server did not answer in time.
            ConnectionFailedError: the download failed (network error or non-2xx status).
        """
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConnectionFailedError(f"cannot download {url!r}: not an http(s) URL")
        end = None if timeout is None else time.monotonic() + timeout
        key = (parts.scheme, parts.hostname, parts.port)
        target = parts.path or "/"
        if parts.query:
            target += "?" + parts.query
        # A pooled connection may have been closed by the server meanwhile: one retry on a
        # fresh connection covers that without hiding real failures.
        for attempt in range(2):
            with self._lock:
                idle = self._pool[key]
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
                if response.status // 100 != 2:
                    kind = "a redirect" if response.status // 100 == 3 else "HTTP error"
                    raise DownloadError(
                        f"download of {url} failed: {kind} {response.status} {response.reason}",
                        url=url, status=response.status,
                    )  # fmt: skip
                body = _read_body(conn, response, url, end)
            except TimeoutError as exc:
                conn.close()
                raise RequestTimeoutError(f"download of {url} timed out") from exc
            except DownloadError:
                conn.close()
                raise
            except (OSError, http.client.HTTPException) as exc:
                conn.close()
                if attempt == 0:
                    continue
                raise ConnectionFailedError(f"download of {url} failed: {exc}") from exc
            keep = not response.will_close
            if keep:
                with self._lock:
                    keep = len(self._pool[key]) < _MAX_IDLE_PER_HOST
                    if keep:
                        self._pool[key].append(conn)
            if not keep:
                conn.close()
            return body, response.getheader("Content-Type")
        raise AssertionError("unreachable")  # pragma: no cover

    def close(self) -> None:
        """Close every idle pooled connection; later downloads open new ones."""
        with self._lock:
            idle = [conn for conns in self._pool.values() for conn in conns]
            self._pool.clear()
        for conn in idle:
            conn.close()


def _read_body(
    conn: http.client.HTTPConnection, response: http.client.HTTPResponse, url: str,
    end: float | None,
) -> bytes:  # fmt: skip
    """Read the body by pieces within one total deadline, refusing more than MAX_BODY.

    The socket timeout bounds each read only: a server trickling a byte at a time
    would hold the download for ever. Each read here gets what is left of the deadline.
    """
    declared = response.getheader("Content-Length")
    if declared is not None and declared.isdigit() and int(declared) > MAX_BODY:
        raise DownloadError(
            f"download of {url} refused: {declared} bytes is over the {MAX_BODY} byte cap",
            url=url, status=response.status,
        )  # fmt: skip
    pieces: list[bytes] = []
    size = 0
    while True:
        if end is not None:
            left = end - time.monotonic()
            if left <= 0:
                raise TimeoutError("the download's deadline passed")
            if conn.sock is not None:
                conn.sock.settimeout(left)
        piece = response.read1(_CHUNK)
        if not piece:
            # read1 does not mark a length-delimited response finished (read does):
            # close it, or the kept-alive connection refuses its next request.
            response.close()
            return b"".join(pieces)
        size += len(piece)
        if size > MAX_BODY:
            raise DownloadError(
                f"download of {url} stopped: the body is over the {MAX_BODY} byte cap",
                url=url, status=response.status,
            )  # fmt: skip
        pieces.append(piece)


_default: Downloader | None = None
_default_lock = threading.Lock()


def default() -> Downloader:
    """The process's downloader for results that belong to no client (made on first use)."""
    global _default
    with _default_lock:
        if _default is None:
            _default = Downloader()
        return _default


def _after_fork_in_child() -> None:
    global _default_lock
    _default_lock = threading.Lock()
    for downloader in list(_LIVE):
        downloader._after_fork_in_child()


os.register_at_fork(after_in_child=_after_fork_in_child)
