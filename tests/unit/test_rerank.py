"""The rerank shapes (pure): documents ordered by score with ties in their given order, top_n, documents as
strings or {text}, return_documents, and unknown fields refused by name."""

from __future__ import annotations

import pytest

from rbee.api import rerank, wire


def body(**fields: object) -> rerank.RerankRequest:
    return rerank.RerankRequest.model_validate({"model": "r", "query": "q", "documents": ["a", "b", "c"], **fields})


def test_documents_come_most_relevant_first_and_ties_keep_their_order() -> None:
    shaped = rerank.rerank_response("id", body(), [0.2, 0.9, 0.2], 12)
    assert [r["index"] for r in shaped["results"]] == [1, 0, 2]
    assert shaped["results"][0] == {"index": 1, "relevance_score": 0.9, "document": {"text": "b"}}
    assert shaped["usage"] == {"prompt_tokens": 12, "total_tokens": 12}


def test_top_n_and_return_documents() -> None:
    asked = body(top_n=1, return_documents=False, documents=[{"text": "a"}, "b"])
    assert asked.texts == ["a", "b"]
    assert rerank.rerank_response("id", asked, [0.1, 0.3], 4)["results"] == [{"index": 1, "relevance_score": 0.3}]


def test_unknown_fields_are_refused_by_name_and_documented_no_ops_pass() -> None:
    body(user="me", max_chunks_per_doc=2).refuse_unserved()
    with pytest.raises(wire.Unsupported) as refused:
        body(chunking=True).refuse_unserved()
    assert refused.value.param == "chunking"


def test_a_worker_that_scores_the_wrong_number_of_documents_is_not_trusted() -> None:
    with pytest.raises(wire.Unsupported):
        rerank.rerank_response("id", body(), [0.1], 1)
