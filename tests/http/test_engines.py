"""The worker's app in-process with every text engine on one tiny random llama — transformers + torch and mlx-lm
(on `mlx[cpu]` here) reading its HF folder, llama.cpp and ctransformers reading it converted to GGUF: tokens
stream with their counts, a seed repeats exactly and another differs, stop strings end the text, cancel stops
within a token, and greedy decoding gives the same text on all four."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import jsonschema
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


def test_cancel_stops_within_a_token(client: tuple[TestClient, Runtime], monkeypatch: pytest.MonkeyPatch) -> None:
    test_client, runtime = client
    generate = cast(Backend, runtime.engine).generate

    def read_slowly(*args: Any, **kwargs: Any) -> Iterator[str]:
        # The worker reads the engine at 500 pieces a second: the answer is still running when the cancel comes,
        # however fast the engine (a batching one on this tiny model can finish all 900 tokens first).
        for piece in generate(*args, **kwargs):
            time.sleep(0.002)
            yield piece

    monkeypatch.setattr(runtime.engine, "generate", read_slowly)
    seen = cancel_after(
        test_client, TOKEN, {"request_id": "r-1", "prompt": "class", "max_tokens": 900, "temperature": 1.0}
    )
    assert seen[-1] == -1, "the stream ends with a cancelled done event"
    # A few pieces are in flight while the cancel travels; far from 900.
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


SERVES_SAMPLING = {"torch", "mlx", "gguf"}
GREEDY = {"prompt": "def main():", "max_tokens": 16, "temperature": 0, "repeat_penalty": 1.0}


def test_logit_bias_bans_and_forces_tokens(client: tuple[TestClient, Runtime], engine: Backend) -> None:
    test_client, _ = client
    if engine.name not in SERVES_SAMPLING:
        reply = test_client.post("/v1/execute", json={**GREEDY, "logit_bias": [[5, 1.0]]}, headers=TOKEN)
        assert reply.status_code == 400 and reply.json()["error"]["param"] == "logit_bias", reply.text
        return
    plain = [e for e in stream(test_client, {**GREEDY, "logprobs": 0}) if "token" in e]
    first = plain[0]["logprobs"][0]["token"]  # type: ignore[index]
    first_id = _token_id(engine, first)
    banned = [
        e for e in stream(test_client, {**GREEDY, "logprobs": 0, "logit_bias": [[first_id, -100]]}) if "token" in e
    ]
    assert banned[0]["logprobs"][0]["token"] != first  # type: ignore[index]
    forced = text_of(stream(test_client, {**GREEDY, "max_tokens": 6, "logit_bias": [[first_id, 100]]}))
    assert forced == first * 6, (forced, first)
    size = cast(Any, engine).vocabulary_size()
    reply = test_client.post("/v1/execute", json={**GREEDY, "logit_bias": [[size, 1.0]]}, headers=TOKEN)
    assert reply.status_code == 400 and f"0 to {size - 1}" in reply.json()["error"]["message"], reply.text


def _token_id(engine: Backend, piece: str) -> int:
    """The id of the token whose text is `piece` (the first such, as the engine tokenizes it)."""
    probe: Any = engine
    for token in range(probe.vocabulary_size()):
        if probe._piece(token) == piece.encode():
            return token
    raise AssertionError(f"no token is {piece!r}")


def test_logprobs_come_with_each_token(client: tuple[TestClient, Runtime], engine: Backend) -> None:
    test_client, _ = client
    if engine.name not in SERVES_SAMPLING:
        reply = test_client.post("/v1/execute", json={**GREEDY, "logprobs": 2}, headers=TOKEN)
        assert reply.status_code == 400 and reply.json()["error"]["param"] == "logprobs", reply.text
        return
    events = stream(test_client, {**GREEDY, "logprobs": 3})
    entries = [entry for event in events if "token" in event for entry in event["logprobs"]]  # type: ignore[attr-defined]
    assert len(entries) == events[-1]["total_tokens"] == 16
    for entry in entries:
        top = entry["top_logprobs"]
        assert len(top) == 3 and entry["logprob"] <= 0
        assert [t["logprob"] for t in top] == sorted((t["logprob"] for t in top), reverse=True)
        # Greedy, no penalty: the token chosen is the most likely one.
        assert top[0]["bytes"] == entry["bytes"] and abs(top[0]["logprob"] - entry["logprob"]) < 1e-4
    joined = bytes(b for entry in entries for b in entry["bytes"]).decode("utf-8", errors="replace")
    assert joined.split("\ufffd")[0] == text_of(events).split("\ufffd")[0]
    assert all("logprobs" not in e for e in stream(test_client, GREEDY) if "token" in e)


def test_penalties_change_a_repetitive_answer(client: tuple[TestClient, Runtime], engine: Backend) -> None:
    test_client, _ = client
    if engine.name not in SERVES_SAMPLING:
        body = {**GREEDY, "presence_penalty": 1.0}
        reply = test_client.post("/v1/execute", json=body, headers=TOKEN)
        assert reply.status_code == 400 and reply.json()["error"]["param"] == "presence_penalty", reply.text
        return

    def tokens(**penalty: float) -> list[str]:
        body = {**GREEDY, "max_tokens": 40, "logprobs": 0, **penalty}
        return [entry["token"] for e in stream(test_client, body) if "token" in e for entry in e["logprobs"]]  # type: ignore[attr-defined]

    plain = tokens()
    assert len(set(plain)) < len(plain), "the random model repeats itself when greedy"
    for penalty in ({"presence_penalty": 2.0}, {"frequency_penalty": 2.0}):
        penalized = tokens(**penalty)
        assert penalized != plain, penalty
        assert len(set(penalized)) > len(set(plain)), (penalty, penalized, plain)


PERSON = {
    "type": "object",
    "properties": {"name": {"type": "string", "maxLength": 12}, "age": {"type": "integer", "minimum": 0}},
    "required": ["name", "age"],
    "additionalProperties": False,
}


def test_a_json_schema_holds_whatever_the_model(client: tuple[TestClient, Runtime], engine: Backend) -> None:
    """The random model says noise; held to the schema its answer parses and validates, whatever the seed."""
    test_client, _ = client
    constraint = {"kind": "json_schema", "json_schema": PERSON}
    body = {"prompt": "A person:", "max_tokens": 60, "temperature": 1.0, "constraint": constraint}
    if engine.name not in SERVES_SAMPLING:
        reply = test_client.post("/v1/execute", json=body, headers=TOKEN)
        assert reply.status_code == 400 and reply.json()["error"]["param"] == "response_format", reply.text
        return
    for seed in (1, 2, 3):
        events = stream(test_client, {**body, "seed": seed})
        assert events[-1].get("finish_reason") == "stop", events[-1]
        jsonschema.validate(json.loads(text_of(events)), PERSON)


def test_a_required_tool_call_is_a_valid_call(client: tuple[TestClient, Runtime], engine: Backend) -> None:
    if engine.name not in SERVES_SAMPLING:
        return
    test_client, _ = client
    tool = {
        "name": "get_weather",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "maxLength": 10}},
            "required": ["city"],
            "additionalProperties": False,
        },
    }
    constraint = {"kind": "tool_call", "tools": [tool], "required": True}
    body = {
        "messages": [{"role": "user", "content": "Weather in Oslo?"}],
        "max_tokens": 60,
        "seed": 4,
        "temperature": 1.0,
    }
    events = stream(test_client, {**body, "constraint": constraint})
    call = json.loads(text_of(events))
    assert call["name"] == "get_weather" and isinstance(call["arguments"]["city"], str), call


def test_a_prompt_past_the_context_is_refused_before_the_stream(client: tuple[TestClient, Runtime]) -> None:
    """The tiny llama's context is 1,024 tokens (2,048 for ctransformers): 3,000 words cannot fit."""
    test_client, runtime = client
    reply = test_client.post("/v1/execute", json={"prompt": "def x " * 3000, "max_tokens": 4}, headers=TOKEN)
    assert reply.status_code == 400, reply.text
    error = reply.json()["error"]
    assert error["code"] == "context_length_exceeded" and error["param"] == "prompt", error
    assert "shorten it" in error["message"] and runtime.state is WorkerState.IDLE
