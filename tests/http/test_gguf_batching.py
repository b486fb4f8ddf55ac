"""Continuous batching in the gguf worker (real llama.cpp, SmolLM2, the worker app in process): one model load
serves four requests at once, each seeded answer is the one it gets alone, a cancel frees its sequence
mid-batch, a shared prompt prefix is not evaluated again, a prompt too long for a slot is a 400, and a free slot
between two generating ones is filled for the step and left as it was."""

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
from rbee.worker.backends import Generation
from rbee.worker.backends.gguf import GgufBackend
from rbee.worker.server import Runtime, WorkerOptions, create_app
from tests.http.streams import endless

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

    endings = endless(engine)  # the two that run on must reach max_tokens

    def read(request_id: str) -> None:
        body = {"request_id": request_id, "prompt": "Write a long essay.", "max_tokens": 120, "logit_bias": endings}
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


def test_a_free_slot_between_generating_ones_is_filled_and_its_cache_left_as_it_was(engine: GgufBackend) -> None:
    """llama.cpp splits a batch at a gap in the sequence ids (a micro-batch per run of consecutive slots); the
    loop fills a short gap with a token that reads nothing and is removed again after the call."""
    import llama_cpp

    prompts = ["Zebras run across the plain and", "Quietly the river turns and", "Seven small boats sail and"]

    def start(index: int) -> tuple[Iterator[str], threading.Event, Generation]:
        cancel, result = threading.Event(), Generation()
        options = wire.SamplingOptions(max_tokens=40, seed=5 + index)
        pieces = engine.generate(prompts[index], options, cancel, result)
        return pieces, cancel, result

    def alone(index: int) -> str:
        pieces, _, _ = start(index)
        return "".join(pieces)

    expected = [alone(i) for i in range(3)]
    calls: list[list[tuple[int, bool]]] = []
    decode = engine._ctx.decode

    def spy(batch: object) -> None:
        raw = engine._batch.batch
        calls.append([(raw.seq_id[i][0], bool(raw.logits[i])) for i in range(raw.n_tokens)])
        decode(batch)

    engine._ctx.decode = spy
    try:
        started = [start(i) for i in range(3)]
        firsts = [next(pieces) for pieces, _, _ in started]  # all three are in the batch now
        slots = {id(seq.result): seq.slot for seq in engine._active}
        order = sorted(range(3), key=lambda i: slots[id(started[i][2])])
        low, middle, high = order
        started[middle][1].set()  # the middle slot's request ends: a gap between the other two
        texts = {i: firsts[i] + "".join(started[i][0]) for i in (low, high)}
        "".join(started[middle][0])
    finally:
        engine._ctx.decode = decode
    gap_slot = slots[id(started[middle][2])]
    low_slot, high_slot = slots[id(started[low][2])], slots[id(started[high][2])]
    filled = [
        call for call in calls if (gap_slot, False) in call and (low_slot, True) in call and (high_slot, True) in call
    ]
    assert filled, f"no batch filled slot {gap_slot} between {low_slot} and {high_slot}"
    assert [seq for seq, _ in filled[-1][: high_slot - low_slot + 1]] == list(range(low_slot, high_slot + 1))
    assert texts[low] == expected[low] and texts[high] == expected[high], "the filler changed an answer"
    memory = llama_cpp.llama_get_memory(engine._ctx.ctx)
    for slot, state in enumerate(engine._slots):  # the cache holds exactly what each slot says it holds
        assert llama_cpp.llama_memory_seq_pos_max(memory, slot) == len(state.cached) - 1, slot
    assert alone(middle) == expected[middle], "a request reusing the filled slot's cache answered differently"
