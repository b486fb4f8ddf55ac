"""The OpenAI-compatible API: /v1/models, /v1/chat/completions, /v1/completions, /v1/embeddings.

Each body is validated as OpenAI's, then translated into the one worker request of api/wire.py (so a value the
workers cannot take is the client's 400, never a worker's 502). Streams are written by the worker in OpenAI's
format and relayed as bytes.
"""

from __future__ import annotations

import time
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from rbee.api import calls, openai_stream, wire
from rbee.api import embeddings as vectors
from rbee.api import openai as oai
from rbee.queen import choices, federation, parts, ranking
from rbee.queen.asgi import RelayResponse
from rbee.queen.auth import Key
from rbee.queen.dispatch import Answer
from rbee.queen.errors import ClientError, read_model
from rbee.queen.generation import client_body, generate, refused
from rbee.queen.metrics import Exchange
from rbee.queen.scheduling import Ask
from rbee.spec.backends import ModelKind


async def list_models(request: Request) -> Response:
    queen = parts.of(request)
    queen.fleet.keys.authorize(request, None)
    data = [{"id": name, "object": "model", "created": 0, "owned_by": "rbee"} for name in queen.fleet.served_models()]
    return JSONResponse({"object": "list", "data": data})


async def chat_completions(request: Request) -> Response:
    return await _generate(request, chat=True)


async def completions(request: Request) -> Response:
    return await _generate(request, chat=False)


ENDPOINTS = {
    ModelKind.TEXT: "/v1/chat/completions",
    ModelKind.EMBEDDING: "/v1/embeddings",
    ModelKind.RERANK: "/v1/rerank",
    ModelKind.SPEECH: "/v1/audio/speech",
    ModelKind.TRANSCRIPTION: "/v1/audio/transcriptions",
    ModelKind.IMAGE: "/v1/images/generations",
}
"""Where a model of each kind is asked."""


def require_text_model(queen: parts.Queen, model: str) -> None:
    """404 for a model hive.yaml does not name, 400 for a model of another kind."""
    require_kind(queen, model, ModelKind.TEXT)


def unknown_model(queen: parts.Queen, model: str) -> ClientError:
    """The 404 for a model hive.yaml does not name, with those it serves (what GET /v1/models lists)."""
    served = queen.fleet.served_models()
    offer = f"; this fleet serves {', '.join(served)}" if served else "; this fleet serves no model yet"
    return ClientError(404, f"the model {model} does not exist{offer}", code="model_not_found", param="model")


def require_kind(queen: parts.Queen, model: str, kind: ModelKind) -> None:
    found = queen.fleet.model_kind(model)
    if found is None:
        raise unknown_model(queen, model)
    if found is not kind:
        article = "an" if found is ModelKind.EMBEDDING else "a"
        raise ClientError(
            400,
            f"the model {model} is {article} {found} model; ask it at {ENDPOINTS[found]}",
            code="wrong_model_kind",
            param="model",
        )


async def _generate(request: Request, chat: bool) -> Response:
    queen = parts.of(request)
    key = queen.fleet.keys.authenticate(request)
    asked: type[oai.ChatRequest | oai.CompletionRequest] = oai.ChatRequest if chat else oai.CompletionRequest
    body = await read_model(request, queen.fleet.max_body, asked)
    queen.fleet.keys.permit(key, body.model)
    require_kind(queen, body.model, ModelKind.TEXT)
    request_id = oai.new_id("chatcmpl" if chat else "cmpl")
    include_usage = bool(body.stream_options and body.stream_options.include_usage)
    model = body.model

    def on_error(message: str, code: str) -> bytes:  # an encoder only for a stream that fails
        return openai_stream.StreamEncoder(request_id, model, chat, include_usage).error(message, code)

    shape = ranking.Shape.CHAT if chat else ranking.Shape.COMPLETIONS
    forwarded = await federation.route(request, queen, key, model, shape, bool(body.stream), on_error)
    if forwarded is not None:
        return forwarded
    try:
        fields: dict[str, Any] = {"request_id": request_id, **body.sampling()}
        body.refuse_unserved()
        if isinstance(body, oai.ChatRequest):
            messages = body.rbee_messages(queen.fleet.sees(body.model))
            fields["messages"] = [message.model_dump(exclude_none=True) for message in messages]
        else:
            fields["prompt"] = body.text
    except wire.Unsupported as unserved:
        raise refused(unserved) from None
    tools = [calls.Tool.model_validate(tool) for tool in (fields.get("constraint") or {}).get("tools", ())]
    if body.n > 1:
        return await _choices(request, queen, key, body, fields, tools, include_usage)
    if body.stream:
        fmt = wire.StreamFormat.OPENAI_CHAT if chat else wire.StreamFormat.OPENAI_COMPLETION
        fields.update(format=fmt, openai_model=body.model, include_usage=include_usage)
    answer = await generate(request, queen, key, body.model, fields, on_error if body.stream else None)
    if isinstance(answer, RelayResponse):
        return answer
    return JSONResponse(_whole(request_id, body.model, chat, [answer], tools))


async def _choices(
    request: Request,
    queen: parts.Queen,
    key: Key | None,
    body: oai.ChatRequest | oai.CompletionRequest,
    fields: dict[str, Any],
    tools: list[calls.Tool],
    include_usage: bool,
) -> Response:
    """n > 1: the choices answered side by side (queen/choices.py)."""
    chat, request_id = isinstance(body, oai.ChatRequest), str(fields["request_id"])
    if not body.stream:
        answers = await choices.whole(request, queen, key, body.model, fields, body.n)
        return JSONResponse(_whole(request_id, body.model, chat, answers, tools))
    if tools:
        raise ClientError(
            400,
            "n > 1 with tools is not served as a stream; ask without stream",
            code="unsupported_parameter",
            param="n",
        )
    created = int(time.time())
    encoders = [
        openai_stream.StreamEncoder(request_id, body.model, chat, include_usage, created, index)
        for index in range(body.n)
    ]
    return await choices.streamed(request, queen, key, body.model, fields, encoders)


def _whole(request_id: str, model: str, chat: bool, answers: list[Answer], tools: list[calls.Tool]) -> dict[str, Any]:
    """The response body of whole answers, one choice each: the prompt counted once, every answer's tokens."""
    made = []
    for index, answer in enumerate(answers):
        usage = oai.usage(answer.prompt_tokens, answer.completion_tokens)
        finish = oai.openai_finish(answer.finish_reason)
        if chat:
            call = calls.call_in(answer.text, tools) if tools else None
            one = oai.chat_response(f"{request_id}{index}", model, answer.text, finish, usage, call, answer.logprobs)
        else:
            one = oai.completion_response(request_id, model, answer.text, finish, usage, answer.logprobs)
        made.append(one)
    response = {**made[0], "id": request_id}
    response["choices"] = [{**one["choices"][0], "index": index} for index, one in enumerate(made)]
    completion = sum(answer.completion_tokens for answer in answers)
    response["usage"] = oai.usage(answers[0].prompt_tokens, completion)
    return response


async def embeddings(request: Request) -> Response:
    queen, key, body = await client_body(request, vectors.EmbeddingRequest)
    queen.fleet.keys.permit(key, body.model)
    require_kind(queen, body.model, ModelKind.EMBEDDING)
    forwarded = await federation.route(request, queen, key, body.model, ranking.Shape.EMBEDDINGS, False, None)
    if forwarded is not None:
        return forwarded
    exchange = Exchange(oai.new_id("emb"), body.model, key.name if key else None)
    ask = Ask(body.model, request.headers.get("x-rbee-hive"), exchange.key, sum(map(len, body.texts)))
    execute = wire.EmbedRequest(request_id=exchange.id, input=tuple(body.texts), encoding="base64")
    answer = await queen.dispatch.embed(ask, key, execute, exchange)
    return JSONResponse(
        vectors.embedding_response(body.model, answer["embeddings"], int(answer["prompt_tokens"]), body.encoding_format)
    )
