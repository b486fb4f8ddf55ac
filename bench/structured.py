"""Structured outputs: tokens/s of answers held to a JSON Schema against unconstrained answers, in the same run,
on each text backend that masks tokens with llguidance: gguf (SmolLM2 on llama.cpp), torch and mlx (the same
SmolLM2, dequantized from its GGUF into a Hugging Face folder, on this CPU). ctransformers cannot mask tokens:
a constrained request gets a 400 naming response_format there (tests/http/test_engines.py).

    python bench/structured.py [--runs 6] [--tokens 96] [--backends gguf,torch,mlx]

RESULT structured gguf_ratio=... torch_ratio=... mlx_ratio=... min_ratio=... target_met=yes|no
    (target: json_schema at >= 0.8x unconstrained on every backend)
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from rbee.api.calls import Constraint  # noqa: E402
from rbee.api.wire import ChatMessage, SamplingOptions  # noqa: E402
from rbee.worker.backends import Generation, create  # noqa: E402
from tests.models import fetch_smollm2, smollm2_folder  # noqa: E402

SCHEMA = {
    "type": "object",
    "properties": {
        "title": {"type": "string"},
        "year": {"type": "integer"},
        "genres": {"type": "array", "items": {"type": "string"}},
        "summary": {"type": "string"},
    },
    "required": ["title", "year", "genres", "summary"],
    "additionalProperties": False,
}
NEEDS = {"gguf": "llama_cpp", "torch": "transformers", "mlx": "mlx_lm"}


def rate(engine: Any, constraint: Constraint | None, runs: int, tokens: int) -> float:
    prompt, stops = engine.render_chat([ChatMessage(role="user", content="Describe a film you like, as JSON.")])
    total, seconds = 0, 0.0
    for seed in range(runs):
        options = SamplingOptions(max_tokens=tokens, seed=seed, stop=stops, constraint=constraint)
        result = Generation()
        started = time.perf_counter()
        for _ in engine.generate(prompt, options, threading.Event(), result):
            pass
        seconds += time.perf_counter() - started
        total += result.completion_tokens
    return total / seconds


def measure(name: str, model: Path, runs: int, tokens: int) -> tuple[float, float, float]:
    engine: Any = create(name, str(model), "cpu", 2, (1, 2048))
    engine.load(lambda _: None)
    try:
        rate(engine, None, 1, 8)  # warm up
        free = rate(engine, None, runs, tokens)
        schema = rate(engine, Constraint(kind="json_schema", json_schema=SCHEMA), runs, tokens)
        anything = rate(engine, Constraint(kind="json"), runs, tokens)
    finally:
        engine.unload()
    return free, schema, anything


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=6)
    parser.add_argument("--tokens", type=int, default=96)
    parser.add_argument("--backends", default="gguf,torch,mlx")
    args = parser.parse_args()
    cache = Path(os.environ.get("RBEE_BENCH_CACHE", tempfile.gettempdir()))
    gguf = fetch_smollm2(cache / "rbee-smollm2")
    ratios: dict[str, float] = {}
    for name in args.backends.split(","):
        if importlib.util.find_spec(NEEDS[name]) is None:
            print(f"{name}: not installed, skipped")
            continue
        model = gguf if name == "gguf" else smollm2_folder(gguf, cache / "rbee-smollm2-hf")
        free, schema, anything = measure(name, model, args.runs, args.tokens)
        ratios[name] = schema / free
        print(
            f"{name}: unconstrained {free:.1f} tok/s, json_schema {schema:.1f} tok/s ({schema / free:.2f}x), "
            f"json_object {anything:.1f} tok/s ({anything / free:.2f}x)"
        )
    worst = min(ratios.values(), default=0.0)
    shown = " ".join(f"{name}_ratio={ratio:.2f}" for name, ratio in ratios.items())
    print(f"RESULT structured {shown} min_ratio={worst:.2f} target_met={'yes' if worst >= 0.8 else 'no'}")


if __name__ == "__main__":
    main()
