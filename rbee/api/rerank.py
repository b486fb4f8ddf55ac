"""The rerank request and response bodies (pure): the Jina/Cohere shape that llama.cpp, vLLM and LocalAI serve
at `/v1/rerank`, and that RAG tools (Open WebUI, LangChain, LlamaIndex) send: a query and documents in, the
documents' indexes ordered by relevance out."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field

from rbee.api.wire import Unsupported, refuse_unserved

NO_OPS = frozenset({"user", "max_chunks_per_doc", "rank_fields"})
"""Accepted and not acted on: `user` labels a request; Cohere's chunking and field options change nothing for
plain text documents (each is scored whole, cut to the model's length)."""


class Document(BaseModel):
    model_config = ConfigDict(extra="forbid")
    text: str


class RerankRequest(BaseModel):
    model_config = ConfigDict(extra="allow")

    model: str
    query: Annotated[str, Field(min_length=1)]
    documents: Annotated[list[str | Document], Field(min_length=1, max_length=1000)]
    top_n: Annotated[int, Field(ge=1)] | None = None
    return_documents: bool = True

    def refuse_unserved(self) -> None:
        refuse_unserved(self.model_extra or {}, NO_OPS, {})

    @property
    def texts(self) -> list[str]:
        return [document if isinstance(document, str) else document.text for document in self.documents]


def rerank_response(request_id: str, body: RerankRequest, scores: Sequence[float], tokens: int) -> dict[str, Any]:
    """The documents, most relevant first (ties in their given order), cut to `top_n`."""
    if len(scores) != len(body.documents):
        raise Unsupported("documents", f"the worker scored {len(scores)} of {len(body.documents)} documents")
    texts = body.texts
    order = sorted(range(len(scores)), key=lambda index: -scores[index])[: body.top_n]
    results = []
    for index in order:
        result: dict[str, Any] = {"index": index, "relevance_score": scores[index]}
        if body.return_documents:
            result["document"] = {"text": texts[index]}
        results.append(result)
    return {
        "id": request_id,
        "model": body.model,
        "results": results,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }
