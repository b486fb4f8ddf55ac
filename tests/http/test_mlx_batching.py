"""Continuous batching in the mlx worker (mlx-lm's BatchGenerator on `mlx[cpu]`, SmolLM2's weights): four requests
in one forward pass, each seeded answer the one it gets alone (every request draws from its own key), and a cancel
mid-batch ends only its request."""

from __future__ import annotations

import importlib
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from rbee.api import wire
from rbee.worker.backends import Generation
from tests.models import QUESTIONS

pytest.importorskip("mlx_lm")

from rbee.worker.backends.mlx import MlxBackend

SLOTS = 4


@pytest.fixture(scope="module")
def engine(smollm2_folder: Path) -> Iterator[MlxBackend]:
    backend = MlxBackend(str(smollm2_folder), device="cpu", slots=SLOTS)
    backend.load(lambda _: None)
    yield backend
    backend.unload()


@pytest.fixture(scope="module")
def prompts(engine: MlxBackend) -> list[str]:
    return [engine.render_chat([wire.ChatMessage(role="user", content=q)])[0] for q in QUESTIONS]


def alone(engine: MlxBackend, prompt: str, **sampling: Any) -> str:
    options = wire.SamplingOptions(**sampling)
    return "".join(engine.generate(prompt, options, threading.Event(), Generation()))


def test_four_requests_share_each_forward_pass_and_each_seeded_answer_is_the_one_it_gets_alone(
    engine: MlxBackend, prompts: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    generate = importlib.import_module("mlx_lm.generate")  # the module: the package names its function alike

    asks: list[tuple[str, dict[str, Any]]] = [
        (prompt, {"max_tokens": 24, "seed": 7 + i, "temperature": 0.7}) for i, prompt in enumerate(prompts)
    ]
    expected = [alone(engine, prompt, **sampling) for prompt, sampling in asks]
    sizes: list[int] = []
    step = generate.GenerationBatch._step

    def spy(self: Any) -> object:
        sizes.append(len(self.uids))
        return step(self)

    monkeypatch.setattr(generate.GenerationBatch, "_step", spy)
    texts: dict[int, str] = {}
    readers = [
        threading.Thread(target=lambda i=i: texts.__setitem__(i, alone(engine, asks[i][0], **asks[i][1])))
        for i in range(len(asks))
    ]
    for reader in readers:
        reader.start()
    for reader in readers:
        reader.join(120)
    assert max(sizes) == SLOTS, f"no forward pass held all {SLOTS} requests: {sorted(set(sizes))}"
    assert [texts[i] for i in range(len(asks))] == expected
    assert all(expected)


def test_a_cancel_mid_batch_ends_only_its_request(engine: MlxBackend, prompts: list[str]) -> None:
    greedy: dict[str, Any] = {"max_tokens": 40, "temperature": 0}
    expected = alone(engine, prompts[2], **greedy)
    cancel = threading.Event()
    results: dict[str, Generation] = {"cut": Generation(), "kept": Generation()}
    texts: dict[str, str] = {}

    def read(name: str, prompt: str, stop: threading.Event) -> None:
        options = wire.SamplingOptions(**greedy)
        texts[name] = "".join(engine.generate(prompt, options, stop, results[name]))

    readers = [
        threading.Thread(target=read, args=("cut", prompts[0], cancel)),
        threading.Thread(target=read, args=("kept", prompts[2], threading.Event())),
    ]
    for reader in readers:
        reader.start()
    deadline = time.monotonic() + 60
    while results["cut"].completion_tokens < 3:
        assert time.monotonic() < deadline, "the request never started"
        time.sleep(0.005)
    cancel.set()
    for reader in readers:
        reader.join(120)
    assert results["cut"].finish_reason is wire.FinishReason.CANCELLED
    assert results["cut"].completion_tokens < 40
    assert results["kept"].finish_reason in (wire.FinishReason.LENGTH, wire.FinishReason.STOP)
    assert texts["kept"] == expected
    assert not engine._active, "the cancelled request still holds a place in the batch"
