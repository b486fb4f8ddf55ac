"""Time to first token and tokens/s for one model and prompt, three ways, in one run:

  (a) through the queen (OpenAI /v1/completions, streamed),
  (b) straight to the worker (/v1/execute, streamed),
  (c) llama-cpp-python's low-level token loop in this process (the baseline).

Targets: (a)/(c) tokens/s >= 0.9, and the time to first token that the queen and worker add over (c) is at
most 5 ms at the median.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.fleet import make_fleet  # noqa: E402
from tests.models import fetch_smollm2  # noqa: E402

PROMPT = "Here is a long story about a dragon who learned to bake bread in a small village. Once upon a time,"


def measure(stream: Callable[[], Iterator[str]]) -> tuple[float, float, int]:
    """(seconds to first token, decode tokens/s, tokens) for one streamed generation."""
    started = time.perf_counter()
    stamps = [time.perf_counter() for _ in stream()]
    if len(stamps) < 2:
        raise SystemExit("the model produced fewer than 2 tokens; use a longer --max-tokens")
    return stamps[0] - started, (len(stamps) - 1) / (stamps[-1] - stamps[0]), len(stamps)


def sse_tokens(response: httpx.Response, key: str) -> Iterator[str]:
    for line in response.iter_lines():
        if not line.startswith("data:") or line == "data: [DONE]":
            continue
        data = json.loads(line[5:])
        if key == "openai":
            choices = data.get("choices") or []
            if choices and choices[0].get("text"):
                yield choices[0]["text"]
        elif "token" in data:
            yield data["token"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--max-tokens", type=int, default=96)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="rbee-bench-"))
    model_path = fetch_smollm2(Path(os.environ.get("RBEE_BENCH_CACHE", tempfile.gettempdir())) / "rbee-smollm2")
    fleet = make_fleet(work, f"file://{model_path}", replicas=1)
    applied = fleet.rbee("apply", str(fleet.spec), "--yes")
    if applied.returncode != 0:
        raise SystemExit(applied.stdout + applied.stderr)
    try:
        state = httpx.get(f"{fleet.hive_url}/v1/state", headers=fleet.hive_auth()).json()
        worker_url = f"http://127.0.0.1:{state['workers'][0]['port']}"
        threads = os.cpu_count() or 1
        sampling = {
            "max_tokens": args.max_tokens,
            "temperature": 0.0,
            "top_k": 40,
            "top_p": 0.95,
            "repeat_penalty": 1.1,
        }
        client = httpx.Client(timeout=120, trust_env=False)

        def via_queen() -> Iterator[str]:
            body = {"model": "smollm2", "prompt": PROMPT, "stream": True, **sampling}
            with client.stream("POST", f"{fleet.queen_url}/v1/completions", json=body, headers=fleet.keyed) as response:
                yield from sse_tokens(response, "openai")

        def via_worker() -> Iterator[str]:
            with client.stream(
                "POST",
                f"{worker_url}/v1/execute",
                json={"prompt": PROMPT, **sampling},
                headers=fleet.worker_auth(state["workers"][0]["id"]),
            ) as response:
                yield from sse_tokens(response, "rbee")

        import llama_cpp

        llama = llama_cpp.Llama(model_path=str(model_path), n_ctx=4096, n_threads=threads, verbose=False)

        def in_process() -> Iterator[str]:
            tokens = llama.tokenize(PROMPT.encode(), add_bos=True, special=True)
            eos = llama.token_eos()
            generation = llama.generate(tokens, top_k=40, top_p=0.95, temp=0.0, repeat_penalty=1.1, reset=True)
            for count, token in enumerate(generation, start=1):
                if token == eos:
                    return
                yield llama.detokenize([token]).decode("utf-8", errors="replace")
                if count >= args.max_tokens:
                    return

        ways = {"queen": via_queen, "worker": via_worker, "inprocess": in_process}
        results: dict[str, list[tuple[float, float, int]]] = {name: [] for name in ways}
        for way in ways.values():
            measure(way)  # warm up: caches, connections, the first prompt evaluation
        for _ in range(args.runs):
            for name, way in ways.items():  # interleaved, so drift on a shared machine hits all three alike
                results[name].append(measure(way))
        client.close()
    finally:
        fleet.rbee("destroy", str(fleet.spec), "--yes")
        subprocess.run(["rm", "-rf", str(work)], check=False)

    ttft = {name: statistics.median(r[0] for r in runs) * 1000 for name, runs in results.items()}
    rate = {name: statistics.median(r[1] for r in runs) for name, runs in results.items()}
    tokens = {name: runs[0][2] for name, runs in results.items()}
    for name in ways:
        print(f"{name:10} ttft {ttft[name]:7.1f} ms  {rate[name]:7.1f} tok/s  ({tokens[name]} tokens)")
    ratio = rate["queen"] / rate["inprocess"]
    added = ttft["queen"] - ttft["inprocess"]
    met = ratio >= 0.9 and added <= 5.0
    print(
        f"RESULT latency runs={args.runs} tokens={tokens['queen']} queen_tok_s={rate['queen']:.1f} "
        f"worker_tok_s={rate['worker']:.1f} inprocess_tok_s={rate['inprocess']:.1f} ratio={ratio:.3f} "
        f"ttft_queen_ms={ttft['queen']:.1f} ttft_worker_ms={ttft['worker']:.1f} "
        f"ttft_inprocess_ms={ttft['inprocess']:.1f} ttft_added_ms={added:.1f} target_met={'yes' if met else 'no'}"
    )


if __name__ == "__main__":
    main()
