"""Anthropic's Messages API (`POST /v1/messages`): the request is translated by api/anthropic.py into the same
dispatch as an OpenAI chat completion; a stream is written by the worker in Anthropic's event format and
relayed untouched, like OpenAI's."""

from __future__ import annotations

from typing import Any

import pydantic
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from rbee.api import anthropic, wire
from rbee.queen import parts
from rbee.queen.asgi import RelayResponse
from rbee.queen.errors import invalid, read_object
from rbee.queen.generation import generate, refused
from rbee.queen.openai_api import require_text_model


async def messages(request: Request) -> Response:
    queen = parts.of(request)
    key = queen.fleet.keys.authenticate(request)
    raw = await read_object(request, queen.fleet.max_body)
    try:
        body = anthropic.MessagesRequest.model_validate(raw)
    except pydantic.ValidationError as failure:
        raise invalid(failure) from None
    request_id = anthropic.new_id()
    try:
        body.refuse_unserved()
        chat = body.chat()
        fields: dict[str, Any] = {
            "request_id": request_id,
            **body.sampling(),
            "messages": [message.model_dump(exclude_none=True) for message in chat],
        }
    except wire.Unsupported as unserved:
        raise refused(unserved) from None
    queen.fleet.keys.permit(key, body.model)
    require_text_model(queen, body.model)
    encoder = None
    if body.stream:
        fields.update(format=wire.StreamFormat.ANTHROPIC, openai_model=body.model)
        encoder = anthropic.StreamEncoder(request_id, body.model)
    answer = await generate(request, queen, key, body.model, fields, encoder.error if encoder else None)
    if isinstance(answer, RelayResponse):
        return answer
    tools = [wire.Tool.model_validate(tool) for tool in (fields.get("constraint") or {}).get("tools", ())]
    call = wire.call_in(answer.text, tools) if tools else None
    shaped = anthropic.message(
        request_id, body.model, answer.text, answer.finish_reason, answer.prompt_tokens, answer.completion_tokens, call
    )
    return JSONResponse(shaped)
