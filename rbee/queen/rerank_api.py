"""`POST /v1/rerank`: a query and documents scored by a worker of a rerank model (a cross-encoder), answered
with the documents' indexes most relevant first (api/rerank.py), admitted and routed like any request."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from rbee.api import openai as oai
from rbee.api import rerank, wire
from rbee.queen.generation import client_body, refused
from rbee.queen.metrics import Exchange
from rbee.queen.openai_api import require_kind
from rbee.queen.scheduling import Ask
from rbee.spec.backends import ModelKind


async def create(request: Request) -> Response:
    queen, key, body = await client_body(request, rerank.RerankRequest)
    try:
        body.refuse_unserved()
    except wire.Unsupported as unserved:
        raise refused(unserved) from None
    queen.fleet.keys.permit(key, body.model)
    require_kind(queen, body.model, ModelKind.RERANK)
    exchange = Exchange(oai.new_id("rerank"), body.model, key.name if key else None)
    texts = body.texts
    ask = Ask(body.model, request.headers.get("x-rbee-hive"), exchange.key, len(body.query) + sum(map(len, texts)))
    execute = wire.RerankRequest(request_id=exchange.id, query=body.query, documents=tuple(texts))
    answer = await queen.dispatch.rerank(ask, key, execute, exchange)
    return JSONResponse(rerank.rerank_response(exchange.id, body, answer["scores"], int(answer["prompt_tokens"])))
