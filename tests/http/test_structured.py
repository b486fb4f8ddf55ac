"""Structured outputs in the gguf worker (real llama.cpp and llguidance, SmolLM2, the worker app in process): an
answer held to a JSON Schema parses and validates whatever the seed, beside an unconstrained request in the same
batch; json_object gives an object; a schema that cannot compile, or a backend that cannot mask tokens, is a
400 naming response_format before anything is generated."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path

import jsonschema
import pytest
from starlette.testclient import TestClient

from rbee.api.state import WorkerState
from rbee.worker.backends.gguf import GgufBackend
from rbee.worker.backends.synthetic import SyntheticBackend
from rbee.worker.server import Runtime, WorkerOptions, create_app

TOKEN = {"Authorization": "Bearer w-token"}
PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 20},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "pets": {"type": "array", "items": {"enum": ["cat", "dog", "fish"]}, "maxItems": 3},
    },
    "required": ["name", "age", "pets"],
    "additionalProperties": False,
}
ASK = [{"role": "user", "content": "Describe a person as JSON: name, age and pets."}]


def options(backend: str) -> WorkerOptions:
    return WorkerOptions("w-1", "smol", "/m", backend, "cpu", "127.0.0.1", 0, None, "w-token")


@pytest.fixture(scope="module")
def worker(smollm2: Path) -> Iterator[TestClient]:
    engine = GgufBackend(str(smollm2), threads=2, slots=4, context=1024)
    engine.load(lambda _: None)
    runtime = Runtime(options=options("gguf"), engine=engine, state=WorkerState.IDLE)
    with TestClient(create_app(runtime)) as client:
        yield client
    engine.unload()


def text_of(client: TestClient, body: dict[str, object]) -> tuple[str, str]:
    reply = client.post("/v1/execute", json=body, headers=TOKEN)
    assert reply.status_code == 200, reply.text
    text, reason = "", ""
    for line in reply.text.splitlines():
        if line.startswith("data:"):
            event = json.loads(line[5:])
            text += str(event.get("token", ""))
            reason = str(event.get("finish_reason", reason))
    return text, reason


def test_a_schema_holds_every_answer_beside_an_unconstrained_one(worker: TestClient) -> None:
    constrained = {"kind": "json_schema", "json_schema": PERSON}
    answers: dict[int, tuple[str, str]] = {}

    def ask(seed: int) -> None:
        body = {"messages": ASK, "max_tokens": 120, "seed": seed, "temperature": 0.9, "constraint": constrained}
        answers[seed] = text_of(worker, body)

    free: list[tuple[str, str]] = []
    readers = [threading.Thread(target=ask, args=(seed,)) for seed in (1, 2, 3)]
    readers.append(threading.Thread(target=lambda: free.append(text_of(worker, {"messages": ASK, "max_tokens": 40}))))
    for reader in readers:
        reader.start()
    for reader in readers:
        reader.join(120)
    for seed, (text, reason) in answers.items():
        assert reason == "stop", (seed, text, reason)
        jsonschema.validate(json.loads(text), PERSON)
    assert free and free[0][0], "the unconstrained request in the same batch answered too"


def test_json_object_gives_an_object(worker: TestClient) -> None:
    # greedy: a sampled object from this small model may run past max_tokens, depending on the llama.cpp build
    body = {"messages": ASK, "max_tokens": 120, "temperature": 0, "constraint": {"kind": "json"}}
    text, reason = text_of(worker, body)
    assert reason == "stop" and isinstance(json.loads(text), dict), text


def test_a_schema_that_cannot_compile_is_a_400_before_anything_runs(worker: TestClient) -> None:
    bad = {"kind": "json_schema", "json_schema": {"type": "object", "properties": {"x": {"$ref": "#/nowhere"}}}}
    reply = worker.post("/v1/execute", json={"prompt": "x", "constraint": bad}, headers=TOKEN)
    assert reply.status_code == 400, reply.text
    error = reply.json()["error"]
    assert error["param"] == "response_format" and "cannot be used" in error["message"], error


def test_a_backend_that_cannot_mask_tokens_refuses_by_name() -> None:
    engine = SyntheticBackend("/m")
    engine.load(lambda _: None)
    runtime = Runtime(options=options("synthetic"), engine=engine, state=WorkerState.IDLE)
    with TestClient(create_app(runtime)) as client:
        reply = client.post("/v1/execute", json={"prompt": "x", "constraint": {"kind": "json"}}, headers=TOKEN)
    assert reply.status_code == 400
    error = reply.json()["error"]
    assert error["param"] == "response_format" and "synthetic backend cannot constrain" in error["message"]


WEATHER = {
    "name": "get_weather",
    "description": "The weather in a city now.",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string", "maxLength": 30}, "unit": {"enum": ["celsius", "fahrenheit"]}},
        "required": ["city", "unit"],
        "additionalProperties": False,
    },
}
TIME = {"name": "get_time", "description": "The time in a city.", "parameters": {"type": "object"}}


def test_a_required_tool_call_is_a_call_of_one_of_the_tools_with_valid_arguments(worker: TestClient) -> None:
    constraint = {"kind": "tool_call", "tools": [WEATHER, TIME], "required": True}
    ask = [{"role": "user", "content": "What is the weather in Paris?"}]
    for seed in (1, 2):
        text, reason = text_of(worker, {"messages": ask, "max_tokens": 80, "seed": seed, "constraint": constraint})
        call = json.loads(text)
        assert reason == "stop" and call["name"] in ("get_weather", "get_time"), text
        if call["name"] == "get_weather":
            jsonschema.validate(call["arguments"], WEATHER["parameters"])


def test_the_openai_stream_of_a_call_is_one_tool_calls_delta_and_finish_reason_tool_calls(worker: TestClient) -> None:
    constraint = {"kind": "tool_call", "tools": [WEATHER], "required": True}
    body = {
        "messages": [{"role": "user", "content": "Weather in Oslo?"}],
        "max_tokens": 80,
        "seed": 3,
        "constraint": constraint,
        "format": "openai-chat",
        "request_id": "chatcmpl-abc",
    }
    reply = worker.post("/v1/execute", json=body, headers=TOKEN)
    chunks = [json.loads(line[5:]) for line in reply.text.splitlines() if line.startswith("data: {")]
    deltas = [chunk["choices"][0]["delta"] for chunk in chunks if chunk.get("choices")]
    calls = [delta["tool_calls"] for delta in deltas if "tool_calls" in delta]
    assert len(calls) == 1 and calls[0][0]["function"]["name"] == "get_weather", deltas
    jsonschema.validate(json.loads(calls[0][0]["function"]["arguments"]), WEATHER["parameters"])
    assert not any(delta.get("content") for delta in deltas), "a call is not also streamed as text"
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"


def test_auto_answers_text_or_a_call_never_broken_json(worker: TestClient) -> None:
    constraint = {"kind": "tool_call", "tools": [WEATHER], "required": False}
    for seed, content in enumerate(["Hello! How are you?", "What is the weather in Rome, in celsius?"]):
        body = {"messages": [{"role": "user", "content": content}], "max_tokens": 60, "seed": seed}
        text, _ = text_of(worker, {**body, "constraint": constraint})
        if text.lstrip().startswith("{"):
            jsonschema.validate(json.loads(text)["arguments"], WEATHER["parameters"])
        else:
            assert text.strip(), "a text answer"
