"""One text generation, whichever API shape it came in (OpenAI chat or completions, Anthropic Messages, OpenAI
Responses): the shape's own module of api/ has already translated the body into `fields` of one
`wire.ExecuteRequest`; this validates it, admits it and answers it, streamed in the wire format the fields
name (the worker writes it, the queen relays it untouched) or read whole for the caller to shape."""

from __future__ import annotations

from typing import Any

import pydantic
from starlette.requests import Request

from rbee.api import wire
from rbee.queen import parts
from rbee.queen.asgi import RelayResponse
from rbee.queen.auth import Key
from rbee.queen.dispatch import Answer, OnError
from rbee.queen.errors import ClientError, Shape, invalid, read_model
from rbee.queen.metrics import Exchange
from rbee.queen.scheduling import Ask, prefix_of
from rbee.queen.streaming import streamed


async def client_body(request: Request, shape: type[Shape]) -> tuple[parts.Queen, Key | None, Shape]:
    """A client request's queen, key and body: the key checked before the body is read, the body bounded and
    validated as `shape` (a 400 naming the field)."""
    queen = parts.of(request)
    key = queen.fleet.keys.authenticate(request)
    return queen, key, await read_model(request, queen.fleet.max_body, shape)


def refused(unserved: wire.Unsupported) -> ClientError:
    """A field the request's shape names and rbee does not serve: 400 naming it."""
    return ClientError(400, str(unserved), code="unsupported_parameter", param=unserved.param)


async def generate(
    request: Request,
    queen: parts.Queen,
    key: Key | None,
    model: str,
    fields: dict[str, Any],
    stream_error: OnError | None,
) -> RelayResponse | Answer:
    """The stream (when `stream_error`, the shape's error frame, is given) or the whole answer."""
    limit = queen.fleet.time_limit(model)
    if limit is not None and fields.get("time_limit") is None:  # bounded in this one validation, not copied after
        fields = {**fields, "time_limit": limit}
    try:
        execute = wire.ExecuteRequest.model_validate(fields)
    except pydantic.ValidationError as failure:
        raise invalid(failure) from None
    texts = [m.content or "" for m in execute.messages] if execute.messages is not None else [execute.prompt or ""]
    pinned, name = request.headers.get("x-rbee-hive"), key.name if key else None
    ask = Ask(model, pinned, name, sum(map(len, texts)), prefix_of(texts))
    exchange = Exchange(execute.request_id, model, ask.key)
    if stream_error is not None:
        relay = await streamed(queen.dispatch, ask, key, execute, exchange, stream_error)
        return RelayResponse(relay.run, relay.abandon)
    return await queen.dispatch.answer(ask, key, execute, exchange)
