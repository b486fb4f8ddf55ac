"""Anthropic's Messages API (`POST /v1/messages`): the request is translated by api/anthropic.py into the same
dispatch as an OpenAI chat completion; a stream is written by the worker in Anthropic's event format and
relayed untouched, like OpenAI's."""

from __future__ import annotations

import pydantic
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from rbee.api import anthropic, wire
from rbee.queen import parts
from rbee.queen.asgi import RelayResponse
from rbee.queen.dispatch import streamed
from rbee.queen.errors import ClientError, invalid, read_object
from rbee.queen.metrics import Exchange
from rbee.queen.openai_api import require_text_model
from rbee.queen.scheduling import Ask


async def messages(request: Request) -> Response:
    queen = parts.of(request)
    key = queen.fleet.keys.authenticate(request)
    raw = await read_object(request, queen.fleet.max_body)
    try:
        body = anthropic.MessagesRequest.model_validate(raw)
    except pydantic.ValidationError as failure:
        raise invalid(failure) from None
    try:
        body.refuse_unserved()
        chat = body.chat()
    except anthropic.Unsupported as unserved:
        raise ClientError(400, str(unserved), param=unserved.param) from None
    queen.fleet.keys.permit(key, body.model)
    require_text_model(queen, body.model)
    request_id = anthropic.new_id()
    fields = {
        "request_id": request_id,
        **body.sampling(),
        "messages": [message.model_dump(exclude_none=True) for message in chat],
    }
    if body.stream:
        fields.update(format=wire.StreamFormat.ANTHROPIC, openai_model=body.model)
    try:
        execute = wire.ExecuteRequest.model_validate(fields)
    except pydantic.ValidationError as failure:
        raise invalid(failure) from None
    prompt_chars = sum(len(message.content or "") for message in chat)
    ask = Ask(body.model, request.headers.get("x-rbee-hive"), key.name if key else None, prompt_chars)
    exchange = Exchange(request_id, body.model, ask.key)
    dispatch = queen.dispatch
    if body.stream:
        encoder = anthropic.StreamEncoder(request_id, body.model)
        return RelayResponse(await streamed(dispatch, ask, key, execute, exchange, encoder.error))
    answer = await dispatch.answer(ask, key, execute, exchange)
    shaped = anthropic.message(
        request_id, body.model, answer.text, answer.finish_reason, answer.prompt_tokens, answer.completion_tokens
    )
    return JSONResponse(shaped)
