"""Continuous batching in the gguf worker (real llama.cpp, SmolLM2, the worker app in process): one model load
serves four requests at once, each seeded answer is the one it gets alone, a cancel frees its sequence
mid-batch, a shared prompt prefix is not evaluated again, and a prompt too long for a slot is a 400."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from rbee.api import wire
from rbee.api.state import WorkerState
from rbee.worker.backends.gguf import GgufBackend
from rbee.worker.server import Runtime, WorkerOptions, create_app

TOKEN = {"Authorization": "Bearer w-token"}
SLOTS = 4
CONTEXT = 1024
PROMPTS = ["Tell me a story.", "Name three colours.", "What is a cloud?", "Write a haiku about rain."]


@pytest.fixture(scope="module")
def engine(smollm2: Path) -> Iterator[GgufBackend]:
    backend = GgufBackend(str(smollm2), threads=2, slots=SLOTS, context=CONTEXT)
    backend.load(lambda _: None)
    yield backend
    backend.unload()


@pytest.fixture
def worker(engine: GgufBackend, smollm2: Path) -> Iterator[tuple[TestClient, Runtime]]:
    options = WorkerOptions("w-1", "smol", str(smollm2), "gguf", "cpu", "127.0.0.1", 0, None, "w-token")
    runtime = Runtime(options=options, engine=engine, state=WorkerState.IDLE)
    with TestClient(create_app(runtime)) as client:
        yield client, runtime


def answer(client: TestClient, body: dict[str, object]) -> tuple[str, dict[str, object], dict[str, object]]:
    """The text of one answer, its last event, and its end marker."""
    reply = client.post("/v1/execute", json=body, headers=TOKEN)
    text, last = "", {}
    for line in reply.text.splitlines():
        if line.startswith("data:"):
            last = json.loads(line[5:])
            text += str(last.get("token", ""))
    end = wire.parse_end(reply.content, stream_start=True) or {}
    return text, last, end


def test_four_requests_run_side_by_side_and_each_seeded_answer_is_the_one_it_gets_alone(
    worker: tuple[TestClient, Runtime],
) -> None:
    client, runtime = worker
    bodies = [
        {"request_id": f"r-{i}", "messages": [{"role": "user", "content": prompt}], "max_tokens": 24, "seed": 11 + i}
        for i, prompt in enumerate(PROMPTS)
    ]
    alone = [answer(client, body)[0] for body in bodies]
    together: dict[int, str] = {}
    most = [0]

    def read(index: int) -> None:
        together[index] = answer(client, bodies[index])[0]

    readers = [threading.Thread(target=read, args=(i,)) for i in range(SLOTS)]
    for reader in readers:
        reader.start()
    while any(reader.is_alive() for reader in readers):
        most[0] = max(most[0], len(runtime.active))
        time.sleep(0.002)
    assert most[0] == SLOTS, f"at most {most[0]} of {SLOTS} requests ran at once"
    assert [together[i] for i in range(SLOTS)] == alone
    assert all(text for text in alone)


def test_a_cancel_mid_batch_ends_only_its_request_and_frees_its_sequence(
    worker: tuple[TestClient, Runtime], engine: GgufBackend
) -> None:
    client, runtime = worker
    ends: dict[str, dict[str, object]] = {}

    def read(request_id: str) -> None:
        body = {"request_id": request_id, "prompt": "Write a long essay.", "max_tokens": 120, "seed": 3}
        ends[request_id] = answer(client, body)[1]

    readers = [threading.Thread(target=read, args=(f"c-{i}",)) for i in range(3)]
    for reader in readers:
        reader.start()
    deadline = time.monotonic() + 30
    while len(runtime.active) < 3:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    time.sleep(0.2)
    assert client.post("/v1/cancel", json={"request_id": "c-1"}, headers=TOKEN).json()["cancelled"] is True
    for reader in readers:
        reader.join(60)
    assert ends["c-1"]["finish_reason"] == "cancelled"
    assert ends["c-0"]["finish_reason"] == ends["c-2"]["finish_reason"] == "length", ends
    assert ends["c-0"]["total_tokens"] == 120
    assert not any(slot.busy for slot in engine._slots), "a sequence is still held"
    assert runtime.state is WorkerState.IDLE
    assert answer(client, {"prompt": "Hi", "max_tokens": 3})[1].get("done") is True


def test_a_shared_prompt_prefix_is_not_evaluated_again(worker: tuple[TestClient, Runtime]) -> None:
    client, _ = worker
    system = "You are a careful assistant for a small farm. " * 40  # ~400 tokens, unlike every other prompt here
    first = answer(client, {"prompt": system + "Question: how many legs has a hen?", "max_tokens": 4})[2]
    second = answer(client, {"prompt": system + "Question: what do cows eat?", "max_tokens": 4})[2]
    assert first["prompt_tokens"] > 400 and first.get("cached_tokens", 0) < 10, first
    assert int(second.get("cached_tokens", 0)) >= 400, second
    assert int(second["cached_tokens"]) < int(second["prompt_tokens"])


def test_a_prompt_longer_than_a_slot_is_a_400(worker: tuple[TestClient, Runtime]) -> None:
    client, runtime = worker
    reply = client.post("/v1/execute", json={"prompt": "word " * (CONTEXT + 50)}, headers=TOKEN)
    assert reply.status_code == 400
    error = reply.json()["error"]
    assert error["code"] == "context_length_exceeded" and f"holds {CONTEXT}" in error["message"]
    assert runtime.active == {}
