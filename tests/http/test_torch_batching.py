"""Continuous batching in the torch worker (transformers + torch on SmolLM2, the worker app in process): one
model load serves four requests in one forward pass, each seeded answer is the one it gets alone, answers longer
than the cache's columns (it shifts them and grows) come out as alone, and a cancel mid-batch ends only its
request and gives its row to another."""

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
from rbee.worker.backends import Generation, rows
from rbee.worker.backends.torch import TorchBackend
from rbee.worker.server import Runtime, WorkerOptions, create_app
from tests.models import QUESTIONS

pytest.importorskip("transformers")

TOKEN = {"Authorization": "Bearer w-token"}
SLOTS = 4


@pytest.fixture(scope="module")
def engine(smollm2_folder: Path) -> Iterator[TorchBackend]:
    backend = TorchBackend(str(smollm2_folder), threads=2, slots=SLOTS)
    backend.load(lambda _: None)
    yield backend
    backend.unload()


@pytest.fixture(scope="module")
def prompts(engine: TorchBackend) -> list[str]:
    """The questions in SmolLM2's chat template (prompts of different lengths)."""
    return [engine.render_chat([wire.ChatMessage(role="user", content=q)])[0] for q in QUESTIONS]


def alone(engine: TorchBackend, prompt: str, **sampling: object) -> str:
    return "".join(engine.generate(prompt, wire.SamplingOptions(**sampling), threading.Event(), Generation()))


def together(engine: TorchBackend, asks: list[tuple[str, dict[str, object]]]) -> tuple[list[str], list[int]]:
    """Every ask at once, each from its own thread: the texts, and the batch size of every forward pass."""
    texts: dict[int, str] = {}
    sizes: list[int] = []
    forward = engine._model.forward

    def spy(*args: object, **kwargs: object) -> object:
        sizes.append(int(kwargs["input_ids"].shape[0]))  # type: ignore[union-attr]
        return forward(*args, **kwargs)

    def read(index: int) -> None:
        prompt, sampling = asks[index]
        texts[index] = alone(engine, prompt, **sampling)

    engine._model.forward = spy
    try:
        readers = [threading.Thread(target=read, args=(i,)) for i in range(len(asks))]
        for reader in readers:
            reader.start()
        for reader in readers:
            reader.join(120)
    finally:
        del engine._model.forward
    return [texts[i] for i in range(len(asks))], sizes


def test_four_requests_share_each_forward_pass_and_each_seeded_answer_is_the_one_it_gets_alone(
    engine: TorchBackend, prompts: list[str]
) -> None:
    asks = [(prompt, {"max_tokens": 24, "seed": 7 + i}) for i, prompt in enumerate(prompts)]
    expected = [alone(engine, prompt, **sampling) for prompt, sampling in asks]
    got, sizes = together(engine, asks)
    assert max(sizes) == SLOTS, f"no forward pass held all {SLOTS} requests: {sorted(set(sizes))}"
    assert got == expected
    assert all(text for text in got)


def test_answers_longer_than_the_cache_columns_come_out_as_alone(
    engine: TorchBackend, prompts: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Prompts of different lengths (a longer one moves the shared column on: the others skip columns) and
    answers of different lengths in a cache that starts with 16 columns and grows meanwhile."""
    monkeypatch.setattr(rows, "FIRST_CAPACITY", 16)
    monkeypatch.setattr(engine, "_cache", rows.RowCache(SLOTS, 2 * engine._context()))
    asks = [(prompt, {"max_tokens": 12 + 10 * i, "temperature": 0}) for i, prompt in enumerate(prompts)]
    expected = [alone(engine, prompt, **sampling) for prompt, sampling in asks]
    got, sizes = together(engine, asks)
    assert got == expected
    assert max(sizes) > 1
    assert engine._cache is not None and engine._cache.capacity > 16, "the cache never grew"


def test_a_cancel_mid_batch_ends_only_its_request_and_its_row_goes_to_another(
    engine: TorchBackend, smollm2_folder: Path, prompts: list[str]
) -> None:
    options = WorkerOptions("w-1", "smol", str(smollm2_folder), "torch", "cpu", "127.0.0.1", 0, None, "w-token")
    runtime = Runtime(options=options, engine=engine, state=WorkerState.IDLE)
    ends: dict[str, dict[str, object]] = {}
    texts: dict[str, str] = {}
    with TestClient(create_app(runtime)) as client:

        def read(request_id: str, prompt: str) -> None:
            body = {"request_id": request_id, "prompt": prompt, "max_tokens": 40, "temperature": 0}
            reply = client.post("/v1/execute", json=body, headers=TOKEN)
            text = ""
            for line in reply.text.splitlines():
                if line.startswith("data:"):
                    event = json.loads(line[5:])
                    text += str(event.get("token", ""))
                    ends[request_id] = event
            texts[request_id] = text

        readers = [threading.Thread(target=read, args=(f"c-{i}", prompts[i])) for i in range(3)]
        for reader in readers:
            reader.start()
        deadline = time.monotonic() + 60
        while len(engine._active) < 3:
            assert time.monotonic() < deadline, "the three requests never ran together"
            time.sleep(0.002)
        first = engine._active[0]
        assert client.post("/v1/cancel", json={"request_id": "c-0"}, headers=TOKEN).json()["cancelled"] is True
        for reader in readers:
            reader.join(120)
    assert ends["c-0"]["finish_reason"] == "cancelled"
    assert first.row == 0 and first not in engine._active
    assert ends["c-1"]["finish_reason"] in ("length", "stop") and ends["c-2"]["finish_reason"] in ("length", "stop")
    # the request in the last row moved into the cancelled one's: its answer is the one it gets alone
    assert texts["c-2"] == alone(engine, prompts[2], max_tokens=40, temperature=0)
    assert texts["c-1"] == alone(engine, prompts[1], max_tokens=40, temperature=0)
    assert not engine._active and runtime.state is WorkerState.IDLE


SHOP = (
    "You are the help desk of a bicycle shop in a small town. Answer in two short sentences, politely, and never "
    "promise a repair date: the workshop sets those. The shop sells city bikes, children's bikes and spare parts."
)


def test_a_prompt_beginning_like_an_earlier_one_evaluates_only_the_rest(engine: TorchBackend) -> None:
    """The second question to the same system prompt copies the first one's keys and values for their shared
    beginning and evaluates only its own tokens; its answer is the one it gets cold."""

    def chat(question: str) -> str:
        messages = [wire.ChatMessage(role="system", content=SHOP), wire.ChatMessage(role="user", content=question)]
        return engine.render_chat(messages)[0]

    def answer(prompt: str) -> tuple[str, Generation]:
        result = Generation()
        options = wire.SamplingOptions(max_tokens=24, temperature=0)
        return "".join(engine.generate(prompt, options, threading.Event(), result)), result

    engine._prefixes.clear()
    cold_text, cold = answer(chat("Do you repair punctured tyres?"))
    assert cold.cached_tokens == 0
    engine._prefixes.clear()
    answer(chat("When are you open on Saturdays?"))
    warm_text, warm = answer(chat("Do you repair punctured tyres?"))
    assert 32 <= warm.cached_tokens < warm.prompt_tokens, (warm.cached_tokens, warm.prompt_tokens)
    assert warm_text == cold_text
    again_text, again = answer(chat("Do you repair punctured tyres?"))  # the whole prompt kept: all but its last
    assert again.cached_tokens == again.prompt_tokens - 1 and again_text == cold_text
