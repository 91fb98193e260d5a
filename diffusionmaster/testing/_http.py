"""Plain HTTP GETs of image files, served on the WebSocket port (house rule 9).

The websockets server hands every HTTP request to ``process_request`` before
the upgrade; a request that is not the WebSocket endpoint ends here. The
server closes the TCP connection after each response (no keep-alive).
"""

from __future__ import annotations

import re

from websockets.asyncio.server import ServerConnection
from websockets.datastructures import Headers
from websockets.http11 import Response

from diffusionmaster.testing._tasks import Worker
from diffusionmaster.testing.images import ImageStore

__all__ = ["image_response"]

_IMAGE_PATH = re.compile(r"/image/([0-9a-fA-F-]{36})\.(jpg|png)")


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
    match = _IMAGE_PATH.fullmatch(path)
    record = store.get(match.group(1)) if match else None
    if match is None or record is None or record.ext != match.group(2):
        return ws.respond(404, "Not Found\n")
    data = await in_worker(record.data)
    headers = Headers(
        [
            ("Content-Type", record.content_type),
            ("Content-Length", str(len(data))),
            ("Cache-Control", "public, max-age=31536000, immutable"),
            ("Connection", "close"),
        ]
    )
    return Response(200, "OK", headers, data)
