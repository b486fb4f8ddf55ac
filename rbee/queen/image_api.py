"""`POST /v1/images/generations`: pictures painted by a worker of an image model (OpenAI's shape,
api/image_generation.py), admitted, routed and started from parked like any request.

The worker always streams (its progress proves it alive to the queen's idle watch, and a client that leaves
stops its denoising at the next step): the queen relays that stream in OpenAI's image events for a client that
asked for one, and reads it whole into OpenAI's ImagesResponse for one that did not.
"""

from __future__ import annotations

import json
import time

import pydantic
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from rbee.api import image_generation as images
from rbee.api import openai as oai
from rbee.api import sse, wire
from rbee.queen.asgi import RelayResponse
from rbee.queen.errors import ClientError, invalid
from rbee.queen.generation import client_body, refused
from rbee.queen.metrics import Exchange
from rbee.queen.openai_api import require_kind
from rbee.queen.scheduling import Ask
from rbee.queen.streaming import streamed
from rbee.spec.backends import ModelKind


def stream_error(message: str, code: str) -> bytes:
    """How an image stream ends when its pictures cannot come: OpenAI's error frame, which its clients raise."""
    return wire.sse(oai.error(message, "api_error", code))


async def generations(request: Request) -> Response:
    queen, key, body = await client_body(request, images.ImageGenerationRequest)
    queen.fleet.keys.permit(key, body.model)
    require_kind(queen, body.model, ModelKind.IMAGE)
    exchange = Exchange(oai.new_id("img"), body.model, key.name if key else None)
    try:
        paint = body.to_worker(exchange.id, queen.fleet.time_limit(body.model))
    except wire.Unsupported as unserved:
        raise refused(unserved) from None
    except pydantic.ValidationError as failure:
        raise invalid(failure) from None
    ask = Ask(body.model, request.headers.get("x-rbee-hive"), exchange.key, len(body.prompt))
    if paint.stream:
        relay = await streamed(queen.dispatch, ask, key, paint, exchange, stream_error)
        return RelayResponse(relay.run, relay.abandon)
    whole = paint.model_copy(update={"stream": True, "events": images.Events.RBEE})
    painted = await queen.dispatch.gather(ask, key, whole, exchange)
    return JSONResponse(images.whole_answer(pictures_of(painted), paint.format, int(time.time())))


def pictures_of(painted: bytes) -> list[dict[str, object]]:
    """The finished pictures of a worker's stream in rbee's events; its error as the client's 502."""
    for event in sse.Parser().feed(painted):
        if event.name == "error":
            error = json.loads(event.data)
            raise ClientError(502, str(error["error"]), "api_error", str(error.get("code") or "generation_failed"))
        if event.data and event.data.startswith('{"images"'):
            pictures: list[dict[str, object]] = event.json()["images"]
            return pictures
    raise ClientError(502, "the worker ended its answer without pictures", "api_error", "worker_lost")
