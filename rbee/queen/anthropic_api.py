"""Anthropic's Messages API (`POST /v1/messages`): the request is translated by api/anthropic.py into the same
dispatch as an OpenAI chat completion; a stream is written by the worker in Anthropic's event format and
relayed untouched, like OpenAI's."""

from __future__ import annotations

from typing import Any

import pydantic
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from rbee.api import anthropic, calls, wire
from rbee.queen import federation, ranking
from rbee.queen.asgi import RelayResponse
from rbee.queen.errors import invalid
from rbee.queen.generation import client_body, generate, refused
from rbee.queen.metrics import Exchange
from rbee.queen.openai_api import require_text_model
from rbee.queen.scheduling import Ask, prefix_of


async def count_tokens(request: Request) -> Response:
    """`{"input_tokens": n}`: the conversation, system prompt and tools as the model's tokenizer counts them
    after its chat template (what a Messages request with the same body would be charged as input)."""
    queen, key, body = await client_body(request, anthropic.CountTokensRequest)
    try:
        body.refuse_unserved()
        chat = body.chat(queen.fleet.sees(body.model))
        execute = wire.ExecuteRequest(
            request_id=anthropic.new_id(), messages=tuple(chat), constraint=body.constraint(), max_tokens=1
        )
    except (wire.Unsupported, pydantic.ValidationError) as unserved:
        if isinstance(unserved, wire.Unsupported):
            raise refused(unserved) from None
        raise invalid(unserved) from None
    queen.fleet.keys.permit(key, body.model)
    require_text_model(queen, body.model)
    name = key.name if key else None
    texts = [message.content or "" for message in chat]
    ask = Ask(body.model, request.headers.get("x-rbee-hive"), name, sum(map(len, texts)), prefix_of(texts))
    tokens = await queen.dispatch.count(ask, key, execute, Exchange(execute.request_id, body.model, ask.key))
    return JSONResponse({"input_tokens": tokens})


async def messages(request: Request) -> Response:
    queen, key, body = await client_body(request, anthropic.MessagesRequest)
    request_id = anthropic.new_id()
    queen.fleet.keys.permit(key, body.model)
    require_text_model(queen, body.model)
    on_error = anthropic.StreamEncoder(request_id, body.model).error
    forwarded = await federation.route(
        request, queen, key, body.model, ranking.Shape.MESSAGES, bool(body.stream), on_error
    )
    if forwarded is not None:
        return forwarded
    try:
        body.refuse_unserved()
        chat = body.chat(queen.fleet.sees(body.model))
        fields: dict[str, Any] = {
            "request_id": request_id,
            **body.sampling(),
            "messages": [message.model_dump(exclude_none=True) for message in chat],
        }
    except wire.Unsupported as unserved:
        raise refused(unserved) from None
    encoder = None
    if body.stream:
        fields.update(format=wire.StreamFormat.ANTHROPIC, openai_model=body.model)
        encoder = anthropic.StreamEncoder(request_id, body.model)
    answer = await generate(request, queen, key, body.model, fields, encoder.error if encoder else None)
    if isinstance(answer, RelayResponse):
        return answer
    tools = [calls.Tool.model_validate(tool) for tool in (fields.get("constraint") or {}).get("tools", ())]
    call = calls.call_in(answer.text, tools) if tools else None
    shaped = anthropic.message(
        request_id, body.model, answer.text, answer.finish_reason, answer.prompt_tokens, answer.completion_tokens, call
    )
    return JSONResponse(shaped)
