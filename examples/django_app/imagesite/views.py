"""``GET /generate?prompt=...``: one generated image, as the response body."""

from __future__ import annotations

import logging

from django.http import HttpRequest, HttpResponse

from diffusionmaster import DiffusionMasterError, InvalidArgumentError, RequestTimeoutError

from .diffusion import get_client

logger = logging.getLogger(__name__)


def generate(request: HttpRequest) -> HttpResponse:
    """Generate one image for ``prompt`` and return its bytes.

    The headers ``X-Image-UUID`` and ``X-Task-UUID`` name the image and its task.
    400: a bad prompt; 504: the image did not come in time; 502: any other failure
    of the service.
    """
    prompt = request.GET.get("prompt", "")
    try:
        (image,) = get_client().text2img(prompt)
        data = image.read()
    except InvalidArgumentError as exc:
        return HttpResponse(f"{exc}\n", status=400, content_type="text/plain")
    except RequestTimeoutError:
        return HttpResponse(
            "the image did not come in time\n", status=504, content_type="text/plain"
        )
    except DiffusionMasterError as exc:
        logger.warning("image generation failed: %s", exc)
        return HttpResponse("image generation failed\n", status=502, content_type="text/plain")
    response = HttpResponse(data, content_type=f"image/{image.format}")
    response["X-Image-UUID"] = image.uuid
    response["X-Task-UUID"] = image.task_uuid or ""
    return response
