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
    text, reason = text_of(worker, {"messages": ASK, "max_tokens": 120, "seed": 5, "constraint": {"kind": "json"}})
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
