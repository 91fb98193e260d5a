"""Plain HTTP GETs of image files (house rule 9), in one of two ways.

* On the WebSocket port (the default): the websockets server hands every HTTP
  request to ``process_request`` before the upgrade; a request that is not the
  WebSocket endpoint ends in :func:`image_response`. websockets closes the TCP
  connection after each such response (``Connection: close``).
* On a port of their own, with keep-alive (``Emulator(keep_alive_images=True)``):
  :class:`KeepAliveImageServer`, a small HTTP/1.1 server on the same event loop
  that answers any number of GETs on one connection, as real image hosts (CDNs)
  do. Clients that pool connections then reuse them, which is what a fork-safety
  bug needs to show up (a pooled socket shared by two processes).

Both answer from the same :class:`~diffusionmaster.testing.images.ImageStore`.
Everything here runs on the emulator's loop thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import threading
from collections.abc import Callable

from websockets.asyncio.server import ServerConnection
from websockets.datastructures import Headers
from websockets.http11 import Response

from diffusionmaster.testing._tasks import Worker
from diffusionmaster.testing.images import ImageRecord, ImageStore

__all__ = ["KeepAliveImageServer", "find_image", "image_response"]

logger = logging.getLogger("diffusionmaster.testing.emulator")

_IMAGE_PATH = re.compile(r"/image/([0-9a-fA-F-]{36})\.(jpg|png)")
_CACHE_CONTROL = "public, max-age=31536000, immutable"
#: An idle kept-alive connection is closed after this many seconds (as CDNs do).
KEEP_ALIVE_IDLE = 15.0
_MAX_HEADER_LINES = 100
_MAX_LINE = 8192


def find_image(path: str, store: ImageStore) -> ImageRecord | None:
    """The image that ``GET path`` names (``/image/<uuid>.<ext>``), or None."""
    match = _IMAGE_PATH.fullmatch(path)
    record = store.get(match.group(1)) if match else None
    if match is None or record is None or record.ext != match.group(2):
        return None
    return record


async def image_response(
    ws: ServerConnection,
    path: str,
    store: ImageStore,
    in_worker: Worker,
) -> Response:
    """Answer ``GET /image/<uuid>.<ext>`` with the file, anything else with 404.

    Args:
        ws: the connection, for its ``respond`` helper.
        path: the request path without its query string.
        store: where the images are.
        in_worker: runs the (lazy) rendering off the event loop.

    Returns:
        200 with the bytes and their Content-Type, or a plain-text 404.
    """
    record = find_image(path, store)
    if record is None:
        return ws.respond(404, "Not Found\n")
    data = await in_worker(record.data)
    headers = Headers(
        [
            ("Content-Type", record.content_type),
            ("Content-Length", str(len(data))),
            ("Cache-Control", _CACHE_CONTROL),
            ("Connection", "close"),
        ]
    )
    return Response(200, "OK", headers, data)


class KeepAliveImageServer:
    """Image files over HTTP/1.1 with keep-alive, on a port of its own.

    Loop thread only, except the counters, which are written under ``cond``.
    Understands ``GET`` (anything else: 405 and close); keeps the connection
    open after each answer unless the client asked for ``Connection: close`` or
    spoke HTTP/1.0; closes a connection idle for :data:`KEEP_ALIVE_IDLE` seconds.
    Requests wait while the emulator is frozen (``thawed`` cleared), like the
    WebSocket port's.

    Args:
        store: where the images are.
        in_worker: runs the (lazy) rendering off the event loop.
        thawed: the emulator's freeze flag.
        cond: guards ``requests`` and ``connections_opened`` (notified on change).
        host: the address to listen on.
    """

    def __init__(
        self,
        store: ImageStore,
        in_worker: Worker,
        thawed: asyncio.Event,
        cond: threading.Condition,
        host: str,
    ) -> None:
        self.store = store
        self.in_worker = in_worker
        self.thawed = thawed
        self.cond = cond
        self.host = host
        self.port = 0  # 0 until the first listen(); then kept, like the WebSocket port
        self.requests = 0
        self.connections_opened = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def listen(self) -> None:
        """Start listening (on ``self.port``; 0 picks a free port, then kept)."""
        self._server = await asyncio.start_server(
            self._serve, self.host, self.port, limit=_MAX_LINE
        )
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        """Stop listening and abort every connection, idle or busy."""
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        for writer in list(self._writers):
            writer.transport.abort()
        try:
            await asyncio.wait_for(server.wait_closed(), 5.0)
        except asyncio.TimeoutError:
            logger.warning("image connections still open 5 s after stopping")

    def _count(self, update: Callable[[], None]) -> None:
        with self.cond:
            update()
            self.cond.notify_all()

    def _opened(self) -> None:
        self.connections_opened += 1

    def _requested(self) -> None:
        self.requests += 1

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        self._count(self._opened)
        try:
            while True:
                keep = await self._answer_one(reader, writer)
                await writer.drain()
                if not keep:
                    break
        except (ConnectionError, asyncio.IncompleteReadError):
            pass  # the client went away: nothing to answer
        except Exception:
            logger.exception("image request handler failed")
        finally:
            self._writers.discard(writer)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _read_line(self, reader: asyncio.StreamReader) -> bytes | None:
        # None: the connection is to be closed (idle, ended, or a line over the limit).
        try:
            return await asyncio.wait_for(reader.readline(), KEEP_ALIVE_IDLE)
        except (asyncio.TimeoutError, ValueError, asyncio.LimitOverrunError):
            return None

    async def _answer_one(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        """Read one request and answer it; return whether the connection stays open."""
        line = await self._read_line(reader)
        if not line:
            return False
        fields: dict[str, str] = {}
        for _ in range(_MAX_HEADER_LINES):
            header = await self._read_line(reader)
            if not header:
                return False  # idle, ended or over-long mid-request: nothing to answer
            if header in (b"\r\n", b"\n"):
                break
            name, _, value = header.decode("latin-1").partition(":")
            fields[name.strip().lower()] = value.strip()
        else:
            return self._write(writer, 431, "Request Header Fields Too Large", {}, b"", False)
        self._count(self._requested)
        await self.thawed.wait()
        parts = line.decode("latin-1").split()
        if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
            return self._write(writer, 400, "Bad Request", {}, b"Bad Request\n", False)
        method, target, version = parts
        connection = fields.get("connection", "").lower()
        keep = "close" not in connection and (version != "HTTP/1.0" or "keep-alive" in connection)
        if fields.get("content-length", "0") != "0" or "transfer-encoding" in fields:
            return self._write(writer, 400, "Bad Request", {}, b"No body expected\n", False)
        if method != "GET":
            allow = {"Allow": "GET"}
            return self._write(writer, 405, "Method Not Allowed", allow, b"GET only\n", False)
        record = find_image(target.split("?", 1)[0], self.store)
        if record is None:
            return self._write(writer, 404, "Not Found", {}, b"Not Found\n", keep)
        data = await self.in_worker(record.data)
        headers = {"Content-Type": record.content_type, "Cache-Control": _CACHE_CONTROL}
        return self._write(writer, 200, "OK", headers, data, keep)

    def _write(
        self,
        writer: asyncio.StreamWriter,
        status: int,
        reason: str,
        headers: dict[str, str],
        body: bytes,
        keep: bool,
    ) -> bool:
        fields = {
            "Content-Type": "text/plain; charset=utf-8",
            **headers,
            "Content-Length": str(len(body)),
            "Connection": "keep-alive" if keep else "close",
        }
        head = f"HTTP/1.1 {status} {reason}\r\n" + "".join(
            f"{name}: {value}\r\n" for name, value in fields.items()
        )
        writer.write(head.encode("latin-1") + b"\r\n" + body)
        return keep
