"""The worker's app in-process with every text engine on one tiny random llama — transformers + torch and mlx-lm
(on `mlx[cpu]` here) reading its HF folder, llama.cpp and ctransformers reading it converted to GGUF: tokens
stream with their counts, a seed repeats exactly and another differs, stop strings end the text, cancel stops
within a token, and greedy decoding gives the same text on all four."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from rbee.api.state import WorkerState
from rbee.api.wire import FinishReason, SamplingOptions
from rbee.worker.backends import Backend, Embedder, Generation, create
from rbee.worker.server import Runtime, WorkerOptions, create_app
from tests.http.streams import cancel_after

TOKEN = {"Authorization": "Bearer w-token"}


ENGINES = ["torch", "mlx", "gguf", "ctransformers"]
NEEDS = {"mlx": "mlx_lm", "ctransformers": "ctransformers", "gguf": "llama_cpp", "torch": "transformers"}


def model_for(name: str, folder: Path, gguf: Path) -> Path:
    return gguf if name in ("gguf", "ctransformers") else folder


@pytest.fixture(scope="module", params=ENGINES)
def engine(request: pytest.FixtureRequest, tiny_llama: Path, tiny_llama_gguf: Path) -> Iterator[Backend]:
    pytest.importorskip(NEEDS[request.param], reason=f"the {request.param} engine is not installed")
    backend = create(request.param, str(model_for(request.param, tiny_llama, tiny_llama_gguf)), "cpu", 2)
    assert not isinstance(backend, Embedder)
    backend.load(lambda _: None)
    yield backend
    backend.unload()


@pytest.fixture
def client(engine: Backend, tiny_llama: Path) -> Iterator[tuple[TestClient, Runtime]]:
    options = WorkerOptions(
        worker_id="w-1",
        model="tiny",
        model_path=str(tiny_llama),
        backend=engine.name,
        device="cpu",
        host="127.0.0.1",
        port=0,
        hive_url=None,
        token="w-token",
    )
    runtime = Runtime(options=options, engine=engine, state=WorkerState.IDLE)
    with TestClient(create_app(runtime)) as test_client:
        yield test_client, runtime


def stream(test_client: TestClient, body: dict[str, object]) -> list[dict[str, object]]:
    text = test_client.post("/v1/execute", json=body, headers=TOKEN).text
    return [json.loads(line[5:]) for line in text.splitlines() if line.startswith("data:")]


def text_of(events: list[dict[str, object]]) -> str:
    return "".join(str(event.get("token", "")) for event in events)


def test_tokens_stream_with_their_counts(client: tuple[TestClient, Runtime]) -> None:
    test_client, runtime = client
    events = stream(test_client, {"prompt": "def main():", "max_tokens": 12, "seed": 3})
    tokens = [event for event in events if "token" in event]
    assert [token["index"] for token in tokens] == list(range(len(tokens)))
    assert len(tokens) > 1
    done = events[-1]
    assert done["done"] is True and done["total_tokens"] == 12 and done["finish_reason"] == "length"
    assert int(str(done["prompt_tokens"])) >= 3
    assert runtime.state is WorkerState.IDLE


def test_the_same_seed_repeats_and_another_differs(client: tuple[TestClient, Runtime]) -> None:
    test_client, _ = client
    body = {"messages": [{"role": "user", "content": "Tell me a story."}], "max_tokens": 24, "temperature": 0.9}
    first = text_of(stream(test_client, {**body, "seed": 42}))
    again = text_of(stream(test_client, {**body, "seed": 42}))
    other = text_of(stream(test_client, {**body, "seed": 43}))
    assert first == again and first
    assert other != first


def test_a_stop_string_ends_the_text(client: tuple[TestClient, Runtime]) -> None:
    test_client, _ = client
    body = {"prompt": "import os", "max_tokens": 40, "temperature": 0}
    full = text_of(stream(test_client, body))
    stop = full[len(full) // 2 : len(full) // 2 + 3]
    assert len(stop) == 3
    events = stream(test_client, {**body, "stop": [stop]})
    assert text_of(events) == full[: full.index(stop)]
    assert events[-1]["finish_reason"] == "stop"


def test_cancel_stops_within_a_token(client: tuple[TestClient, Runtime]) -> None:
    test_client, runtime = client
    seen = cancel_after(
        test_client, TOKEN, {"request_id": "r-1", "prompt": "class", "max_tokens": 900, "temperature": 1.0}
    )
    assert seen[-1] == -1, "the stream ends with a cancelled done event"
    # This model makes hundreds of tokens/s, so a few are in flight while the cancel travels; far from 900.
    assert len(seen) < 60, seen
    assert runtime.state is WorkerState.IDLE


def test_the_engine_stops_within_one_token_of_a_cancel(engine: Backend) -> None:
    cancel, result = threading.Event(), Generation()
    pieces = engine.generate("class", SamplingOptions(max_tokens=900, temperature=1.0), cancel, result)
    for _ in range(3):
        next(pieces)
    cancel.set()
    at_cancel = result.completion_tokens
    after = list(pieces)
    assert len(after) <= 1 and result.finish_reason is FinishReason.CANCELLED
    assert result.completion_tokens <= at_cancel + 1


def test_greedy_decoding_gives_the_same_text_on_every_engine(tiny_llama: Path, tiny_llama_gguf: Path) -> None:
    texts = {}
    for name in ENGINES:
        pytest.importorskip(NEEDS[name], reason=f"the {name} engine is not installed")
        backend = create(name, str(model_for(name, tiny_llama, tiny_llama_gguf)), "cpu", 2)
        assert not isinstance(backend, Embedder)
        backend.load(lambda _: None)
        result = Generation()
        options = SamplingOptions(max_tokens=10, temperature=0, repeat_penalty=1.0)
        text = "".join(backend.generate("def main():", options, threading.Event(), result))
        texts[name] = (result.prompt_tokens, result.completion_tokens, text.split("\ufffd")[0])
        backend.unload()
    # The random model soon emits byte tokens that are not valid UTF-8, which engines render differently;
    # up to the first of them, every engine must say the same thing from the same prompt tokens.
    assert len(set(texts.values())) == 1, texts
    assert len(texts["torch"][2]) >= 10, texts
