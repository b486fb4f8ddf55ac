"""OpenAI's Responses API (`POST /v1/responses`), stateless: translated by api/responses.py into the same
dispatch as a chat completion; a stream is written by the worker in the Responses event format and relayed
untouched."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from rbee.api import calls, responses, wire
from rbee.queen import federation, ranking
from rbee.queen.asgi import RelayResponse
from rbee.queen.generation import client_body, generate, refused
from rbee.queen.openai_api import require_text_model


async def create(request: Request) -> Response:
    queen, key, body = await client_body(request, responses.ResponsesRequest)
    queen.fleet.keys.permit(key, body.model)
    require_text_model(queen, body.model)
    request_id = responses.new_id()
    on_error = responses.StreamEncoder(request_id, body.model).error
    forwarded = await federation.route(
        request, queen, key, body.model, ranking.Shape.RESPONSES, bool(body.stream), on_error
    )
    if forwarded is not None:
        return forwarded
    try:
        body.refuse_unserved()
        chat = body.chat(queen.fleet.sees(body.model))
    except wire.Unsupported as unserved:
        raise refused(unserved) from None
    fields: dict[str, Any] = {
        "request_id": request_id,
        **body.sampling(),
        "messages": [message.model_dump(exclude_none=True) for message in chat],
    }
    encoder = None
    if body.stream:
        fields.update(format=wire.StreamFormat.OPENAI_RESPONSES, openai_model=body.model)
        encoder = responses.StreamEncoder(request_id, body.model)
    answer = await generate(request, queen, key, body.model, fields, encoder.error if encoder else None)
    if isinstance(answer, RelayResponse):
        return answer
    tools = [calls.Tool.model_validate(tool) for tool in (fields.get("constraint") or {}).get("tools", ())]
    call = calls.call_in(answer.text, tools) if tools else None
    return JSONResponse(
        responses.response(
            request_id,
            body.model,
            answer.text,
            answer.finish_reason,
            answer.prompt_tokens,
            answer.completion_tokens,
            call=call,
        )
    )
