"""Structured outputs: tokens/s of answers held to a JSON Schema against unconstrained answers, on the gguf
engine (SmolLM2, llama.cpp with llguidance's token masks), in the same run. The other text backends cannot mask
tokens: a request with response_format gets a 400 naming it there (tests/http/test_structured.py), so they
have nothing to measure.

    python bench/structured.py [--runs 6]

RESULT structured backend=gguf unconstrained_tps=... json_schema_tps=... json_object_tps=... ratio=...
target_met=yes|no        (target: json_schema at >= 0.8x unconstrained)
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from rbee.api.calls import Constraint  # noqa: E402
from rbee.api.wire import ChatMessage, SamplingOptions  # noqa: E402
from rbee.worker.backends import Generation  # noqa: E402
from rbee.worker.backends.gguf import GgufBackend  # noqa: E402
from tests.models import fetch_smollm2  # noqa: E402

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


def rate(engine: GgufBackend, constraint: Constraint | None, runs: int, tokens: int) -> float:
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=6)
    parser.add_argument("--tokens", type=int, default=96)
    args = parser.parse_args()
    model = fetch_smollm2(Path(os.environ.get("RBEE_BENCH_CACHE", tempfile.gettempdir())) / "rbee-smollm2")
    engine = GgufBackend(str(model), threads=2, slots=1, context=2048)
    engine.load(lambda _: None)
    try:
        rate(engine, None, 1, 8)  # warm up
        free = rate(engine, None, args.runs, args.tokens)
        schema = rate(engine, Constraint(kind="json_schema", json_schema=SCHEMA), args.runs, args.tokens)
        anything = rate(engine, Constraint(kind="json"), args.runs, args.tokens)
    finally:
        engine.unload()
    print(f"gguf: unconstrained {free:.1f} tok/s, json_schema {schema:.1f} tok/s, json_object {anything:.1f} tok/s")
    print("torch, mlx, ctransformers, synthetic: a constrained request is refused (400, param response_format)")
    ratio = schema / free
    print(
        f"RESULT structured backend=gguf unconstrained_tps={free:.1f} json_schema_tps={schema:.1f} "
        f"json_object_tps={anything:.1f} ratio={ratio:.2f} target_met={'yes' if ratio >= 0.8 else 'no'}"
    )


if __name__ == "__main__":
    main()
