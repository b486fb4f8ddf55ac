"""Federation's cost and its failover, on loopback: provider queens (real `rbee queen serve` processes, each over
a synthetic fleet that answers at once) and a platform queen that has them as providers.

- Queen-added TTFT: the same streamed request sent to a provider queen directly and through the platform, in turn;
  the median of the difference (target: at most 2 ms here).
- Failover: the cheapest provider killed (its port refuses connections), and frozen (SIGSTOP: it accepts and says
  nothing): the time to the first token of a request that meets it, against the retry budget (target: within it).

    python bench/federation.py [--runs 200]

RESULT federation ttft_direct_ms=... ttft_platform_ms=... ttft_added_median_ms=... failover_killed_ms=...
failover_frozen_ms=... retry_budget_ms=... target_met=yes|no
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.federation import RunningQueen, as_provider, start_queen  # noqa: E402

BUDGET = 4.0
BODY = {"model": "synthetic", "prompt": "say: hi", "max_tokens": 2, "stream": True}


async def first_token(session: aiohttp.ClientSession, url: str, headers: dict[str, str]) -> tuple[float, str]:
    """Seconds to the first token event of a streamed completion, and which provider answered."""
    began = time.perf_counter()
    async with session.post(f"{url}/v1/completions", json=BODY, headers=headers) as response:
        if response.status != 200:
            raise SystemExit(f"{url} answered {response.status}: {await response.text()}")
        buffer = b""
        async for chunk in response.content.iter_any():
            buffer += chunk
            if b'"text"' in buffer:
                took = time.perf_counter() - began
                await response.read()
                return took, response.headers.get("x-rbee-provider", "")
    raise SystemExit(f"{url} sent no token")


async def ttft(provider: RunningQueen, platform: RunningQueen, runs: int) -> dict[str, float]:
    direct, through = [], []
    async with aiohttp.ClientSession() as session:
        for _ in range(20):  # warm both paths' connections
            await first_token(session, provider.url, provider.keyed)
            await first_token(session, platform.url, platform.keyed)
        for _ in range(runs):
            direct.append((await first_token(session, provider.url, provider.keyed))[0])
            seconds, who = await first_token(session, platform.url, platform.keyed)
            if who != provider.name:
                raise SystemExit(f"the platform asked {who or 'its own fleet'}, not {provider.name}")
            through.append(seconds)
    added = [b - a for a, b in zip(direct, through, strict=True)]
    return {
        "direct": statistics.median(direct) * 1000,
        "platform": statistics.median(through) * 1000,
        "added": statistics.median(added) * 1000,
        "added_p95": sorted(added)[int(len(added) * 0.95)] * 1000,
    }


async def failover(platform: RunningQueen) -> tuple[float, str]:
    async with aiohttp.ClientSession() as session:
        return await first_token(session, platform.url, platform.keyed)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=200)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="rbee-federation-"))
    queens: list[RunningQueen] = []
    try:
        cheap = start_queen(root, "cheap", rate=2000.0)
        backup = start_queen(root, "backup", rate=2000.0)
        queens += [cheap, backup]
        platform = start_queen(
            root,
            "platform",
            replicas=0,
            providers=[
                as_provider(cheap, "BENCH_CHEAP_KEY", pricing={"input": 0.1, "output": 0.1}),
                as_provider(backup, "BENCH_BACKUP_KEY", pricing={"input": 0.2, "output": 0.2}),
            ],
            queen={"federation": {"retry_budget": BUDGET, "probe_interval": "1s"}},
        )
        queens.append(platform)
        time.sleep(2)  # the providers probed
        measured = asyncio.run(ttft(cheap, platform, args.runs))
        print(
            f"time to first token: direct to the provider {measured['direct']:.2f} ms, through the platform "
            f"{measured['platform']:.2f} ms; added {measured['added']:.2f} ms at the median "
            f"(p95 {measured['added_p95']:.2f})"
        )
        cheap.kill()
        killed, who = asyncio.run(failover(platform))
        if who != "backup":
            raise SystemExit(f"after the kill, {who or 'nobody'} answered, not backup")
        cheap.start()
        time.sleep(2.5)  # probed healthy again
        os.kill(cheap.pid, signal.SIGSTOP)
        try:
            frozen, who = asyncio.run(failover(platform))
        finally:
            os.kill(cheap.pid, signal.SIGCONT)
        if who != "backup":
            raise SystemExit(f"after the freeze, {who or 'nobody'} answered, not backup")
        print(
            f"failover: a killed provider cost {killed * 1000:.1f} ms to the first token from the next, a frozen one "
            f"{frozen * 1000:.0f} ms (retry budget {BUDGET * 1000:.0f} ms: a provider that is not the last waits at "
            "most half of what is left)"
        )
        met = measured["added"] <= 2.0 and killed <= BUDGET and frozen <= BUDGET
        print(
            f"RESULT federation ttft_direct_ms={measured['direct']:.2f} ttft_platform_ms={measured['platform']:.2f} "
            f"ttft_added_median_ms={measured['added']:.2f} failover_killed_ms={killed * 1000:.1f} "
            f"failover_frozen_ms={frozen * 1000:.0f} retry_budget_ms={BUDGET * 1000:.0f} "
            f"target_met={'yes' if met else 'no'}"
        )
    finally:
        for queen in queens:
            queen.stop()


if __name__ == "__main__":
    main()
