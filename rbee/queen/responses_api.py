"""OpenAI's Responses API (`POST /v1/responses`), stateless: translated by api/responses.py into the same
dispatch as a chat completion; a stream is written by the worker in the Responses event format and relayed
untouched."""

from __future__ import annotations

import pydantic
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from rbee.api import responses, wire
from rbee.queen import parts
from rbee.queen.asgi import RelayResponse
from rbee.queen.dispatch import streamed
from rbee.queen.errors import ClientError, invalid, read_object
from rbee.queen.metrics import Exchange
from rbee.queen.openai_api import require_text_model
from rbee.queen.scheduling import Ask


async def create(request: Request) -> Response:
    queen = parts.of(request)
    key = queen.fleet.keys.authenticate(request)
    raw = await read_object(request, queen.fleet.max_body)
    try:
        body = responses.ResponsesRequest.model_validate(raw)
    except pydantic.ValidationError as failure:
        raise invalid(failure) from None
    try:
        body.refuse_unserved()
        chat = body.chat()
    except responses.Unsupported as unserved:
        raise ClientError(400, str(unserved), code="unsupported_parameter", param=unserved.param) from None
    queen.fleet.keys.permit(key, body.model)
    require_text_model(queen, body.model)
    request_id = responses.new_id()
    fields = {
        "request_id": request_id,
        **body.sampling(),
        "messages": [message.model_dump(exclude_none=True) for message in chat],
    }
    if body.stream:
        fields.update(format=wire.StreamFormat.OPENAI_RESPONSES, openai_model=body.model)
    try:
        execute = wire.ExecuteRequest.model_validate(fields)
    except pydantic.ValidationError as failure:
        raise invalid(failure) from None
    prompt_chars = sum(len(message.content or "") for message in chat)
    ask = Ask(body.model, request.headers.get("x-rbee-hive"), key.name if key else None, prompt_chars)
    exchange = Exchange(request_id, body.model, ask.key)
    if body.stream:
        encoder = responses.StreamEncoder(request_id, body.model)
        return RelayResponse(await streamed(queen.dispatch, ask, key, execute, exchange, encoder.error))
    answer = await queen.dispatch.answer(ask, key, execute, exchange)
    return JSONResponse(
        responses.response(
            request_id, body.model, answer.text, answer.finish_reason, answer.prompt_tokens, answer.completion_tokens
        )
    )
