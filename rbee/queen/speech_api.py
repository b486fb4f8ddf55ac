"""`POST /v1/audio/speech`: text spoken by a worker of a speech model, its audio relayed as the worker makes it
(OpenAI's shape, api/speech.py), admitted, routed and started from parked like any request. The answer starts
once a worker has taken the request: its status is then the client's HTTP status, and a worker lost mid-answer
cuts the client's answer off."""

from __future__ import annotations

import pydantic
from starlette.requests import Request
from starlette.responses import Response

from rbee.api import audio as audio_wire
from rbee.api import openai as oai
from rbee.api import speech, wire
from rbee.queen.asgi import RelayResponse
from rbee.queen.errors import invalid
from rbee.queen.generation import client_body, refused
from rbee.queen.metrics import Exchange
from rbee.queen.openai_api import require_kind
from rbee.queen.scheduling import Ask
from rbee.spec.backends import ModelKind


async def create(request: Request) -> Response:
    queen, key, body = await client_body(request, speech.SpeechRequest)
    queen.fleet.keys.permit(key, body.model)
    require_kind(queen, body.model, ModelKind.SPEECH)
    exchange = Exchange(oai.new_id("speech"), body.model, key.name if key else None)
    try:
        speak = body.to_worker(exchange.id)
    except wire.Unsupported as unserved:
        raise refused(unserved) from None
    except pydantic.ValidationError as failure:
        raise invalid(failure) from None
    ask = Ask(body.model, request.headers.get("x-rbee-hive"), exchange.key, len(body.input))
    dispatch = queen.dispatch
    opened = await dispatch.open(ask, key, speak, exchange)
    rate = opened.chunks.header("x-sample-rate")
    return RelayResponse(
        lambda deliver: dispatch.relay(exchange, opened, deliver),
        lambda: dispatch.abandon(exchange, opened),
        audio_wire.AUDIO_TYPES[speak.format],
        **({"x_sample_rate": rate} if rate else {}),
    )
