"""One tiny llama served end to end three ways: its HF folder on torch (the hive's pick for a folder on a CPU
host) and on mlx, and its GGUF on ctransformers; the queen streams each, and a seeded request repeats through the
whole chain."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.fleet import Fleet, make_fleet

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory, tiny_llama: Path, tiny_llama_gguf: Path) -> Iterator[Fleet]:
    pytest.importorskip("mlx_lm", reason="mlx-lm is not installed (pip install 'rbee[mlx]')")
    pytest.importorskip("ctransformers", reason="ctransformers is not installed (pip install 'rbee[ctransformers]')")
    fleet = make_fleet(tmp_path_factory.mktemp("hf"), f"file://{tiny_llama}", model="tiny")
    more = (
        f"  - {{name: tiny-mlx, source: 'file://{tiny_llama}', idle_timeout: 0}}\n"
        f"  - {{name: tiny-ct, source: 'file://{tiny_llama_gguf}', idle_timeout: 0}}\nworkers:\n"
    )
    text = fleet.spec.read_text().replace("workers:\n", more)
    groups = "  - {model: tiny-mlx, hive: local, backend: mlx}\n"
    groups += "  - {model: tiny-ct, hive: local, backend: ctransformers}\n"
    fleet.spec.write_text(text + groups)
    applied = fleet.rbee("apply", str(fleet.spec), "--yes")
    assert applied.returncode == 0, applied.stdout + applied.stderr
    fleet.applied = applied.stdout
    yield fleet
    fleet.rbee("destroy", str(fleet.spec), "--yes")


def test_the_hive_runs_an_hf_folder_on_torch(fleet: Fleet) -> None:
    hives = json.loads(fleet.rbee("status", "--json").stdout)["hives"]
    state = hives[0]["state"]
    assert state["catalog"][0]["format"] == "safetensors"
    workers = sorted((w["model"], w["backend"], w["device"], w["state"]) for w in state["workers"])
    assert workers == [
        ("tiny", "torch", "cpu", "idle"),
        ("tiny-ct", "ctransformers", "cpu", "idle"),
        ("tiny-mlx", "mlx", "cpu", "idle"),
    ]
    assert {"torch", "mlx", "ctransformers"} <= set(state["backends"]) and state["host"]["devices"][0]["id"] == "cpu"


@pytest.mark.parametrize("model", ["tiny", "tiny-mlx", "tiny-ct"])
def test_the_queen_streams_it_and_a_seed_repeats(fleet: Fleet, model: str) -> None:
    body = {"model": model, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 16, "seed": 5}
    texts = []
    for _ in range(2):
        stream = {**body, "stream": True}
        with httpx.stream("POST", f"{fleet.queen_url}/v1/chat/completions", json=stream, headers=fleet.keyed) as reply:
            assert reply.status_code == 200
            chunks = [json.loads(line[6:]) for line in reply.iter_lines() if line.startswith("data: {")]
        texts.append("".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c.get("choices")))
    assert texts[0] and texts[0] == texts[1]
    whole = httpx.post(f"{fleet.queen_url}/v1/chat/completions", json=body, headers=fleet.keyed, timeout=60).json()
    assert whole["choices"][0]["message"]["content"] == texts[0]
    assert whole["usage"]["completion_tokens"] == 16


def test_apply_shows_the_workers_loading_progress(fleet: Fleet) -> None:
    lines = [line.strip() for line in fleet.applied.splitlines() if "ready, loading" in line]
    assert lines, fleet.applied
    assert all(line.startswith("0/1 ready, loading ") and line.endswith("%") for line in lines), lines
