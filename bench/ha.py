"""A highly available queen under load: two queens on one PostgreSQL store (a server started here, as the tests
start it) in front of a synthetic fleet (tokens at a fixed rate; nothing is installed for it: the reconcile loop
is suspended, leadership is not). 50 streams run through the two queens; the leader is killed (kill -9); the
other must lead within the lease time plus one reconcile interval, and every request started after the failover
must be served (0 lost).

    python bench/ha.py [--lease 2] [--streams 50]

RESULT ha lease_s=... failover_s=... target_s=... streams_before=... cut_with_the_leader=... after_failover=...
lost_after_failover=0 target_met=yes|no
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from rbee.keeper.home import Home  # noqa: E402
from rbee.spec.schema import HiveFile  # noqa: E402
from tests import postgres  # noqa: E402
from tests.federation import start_synthetic  # noqa: E402
from tests.servers import free_port  # noqa: E402

RECONCILE = 1.0


def queen(home: Path, port: int, store: str) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-m", "rbee", "queen", "serve", "--home", str(home), "--listen", f"127.0.0.1:{port}"]
    return subprocess.Popen([*command, "--store", store], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def status(url: str, operator: str) -> dict[str, object]:
    try:
        answer: dict[str, object] = httpx.get(
            f"{url}/v2/status", headers={"Authorization": f"Bearer {operator}"}, timeout=2
        ).json()
        return answer
    except httpx.HTTPError:
        return {}


def leads(url: str, operator: str) -> bool:
    leadership = status(url, operator).get("leadership")
    return isinstance(leadership, dict) and bool(leadership.get("this_queen"))


async def stream(session: aiohttp.ClientSession, url: str, key: str, tokens: int) -> bool:
    """One streamed completion; whether it ended with [DONE] and no error."""
    body = {"model": "synthetic", "prompt": "say: x", "max_tokens": tokens, "stream": True}
    try:
        async with session.post(
            f"{url}/v1/completions", json=body, headers={"Authorization": f"Bearer {key}"}
        ) as response:
            if response.status != 200:
                return False
            text = (await response.read()).decode()
            return text.rstrip().endswith("data: [DONE]") and '"error"' not in text
    except (TimeoutError, aiohttp.ClientError, ConnectionError):
        return False


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--lease", type=float, default=2.0)
    parser.add_argument("--streams", type=int, default=50)
    args = parser.parse_args()
    if postgres.missing() is not None:
        raise SystemExit(str(postgres.missing()))
    work = Path(tempfile.mkdtemp(prefix="rbee-ha-"))
    first_home, second_home = Home(work / "a"), Home(work / "b")
    credentials, key = first_home.credentials(create=True), first_home.admin_key(create=True)
    assert credentials is not None and key is not None
    second_home.root.mkdir(mode=0o700)
    for name in ("operator.token", "fleet.key", "admin.key"):
        shutil.copy2(first_home.root / name, second_home.root / name)
    hive_port, ports = free_port(), (free_port(), free_port())
    urls = [f"http://127.0.0.1:{port}" for port in ports]
    synthetic = start_synthetic(hive_port, 4, 32, 40.0)
    processes: list[subprocess.Popen[bytes]] = []
    with postgres.running() as server:
        store = server.database("ha")
        try:
            processes.append(queen(first_home.root, ports[0], store))
            while not leads(urls[0], credentials.operator):
                time.sleep(0.05)
            processes.append(queen(second_home.root, ports[1], store))
            spec = HiveFile.model_validate(
                {
                    "queen": {
                        "listen": f"127.0.0.1:{ports[0]}",
                        "store": store,
                        "lease": args.lease,
                        "reconcile_interval": RECONCILE,
                        "queue_timeout": 10,
                        "max_queue": 1000,
                    },
                    "hives": [{"name": "synthetic", "listen": f"127.0.0.1:{hive_port}"}],
                    "models": [{"name": "synthetic", "source": "file:///synthetic.gguf", "idle_timeout": 0}],
                    "workers": [{"model": "synthetic", "hive": "synthetic", "replicas": 4}],
                }
            )
            operator = {"Authorization": f"Bearer {credentials.operator}"}
            for url in urls:  # nothing is to be installed in the synthetic hive's place
                while status(url, credentials.operator) == {}:
                    time.sleep(0.05)
                httpx.put(f"{url}/v2/reconcile", json={"suspended": True}, headers=operator).raise_for_status()
            httpx.put(
                f"{urls[0]}/v2/spec",
                json={"spec": spec.model_dump(mode="json"), "source": "bench", "policy": None},
                headers=operator,
            ).raise_for_status()
            for url in urls:
                while len(status(url, credentials.operator).get("routes") or []) < 4:  # type: ignore[arg-type]
                    time.sleep(0.05)
            measured = asyncio.run(run(urls, key, processes[0], credentials.operator, args))
        finally:
            for process in processes:
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
                process.wait(10)
            synthetic.terminate()
            synthetic.wait(10)
            shutil.rmtree(work, ignore_errors=True)
    target = args.lease + RECONCILE
    met = measured["failover"] <= target and measured["lost"] == 0
    print(
        f"{args.streams} streams through two queens; the leader killed: the other led after "
        f"{measured['failover']:.2f} s "
        f"(lease {args.lease:g} s + one reconcile interval {RECONCILE:g} s = {target:g} s); {measured['cut']} streams "
        f"through the killed queen were cut with it, {measured['before_ok']} others finished; "
        f"{measured['after']} requests after the failover, {measured['lost']} lost"
    )
    print(
        f"RESULT ha lease_s={args.lease:g} failover_s={measured['failover']:.2f} target_s={target:g} "
        f"streams_before={args.streams} cut_with_the_leader={measured['cut']} after_failover={measured['after']} "
        f"lost_after_failover={measured['lost']} target_met={'yes' if met else 'no'}"
    )


async def run(
    urls: list[str], key: str, leader: subprocess.Popen[bytes], operator: str, args: argparse.Namespace
) -> dict[str, float]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as session:
        running = [asyncio.ensure_future(stream(session, urls[index % 2], key, 200)) for index in range(args.streams)]
        await asyncio.sleep(1.0)  # all under way
        os.kill(leader.pid, signal.SIGKILL)
        killed = time.monotonic()
        while not await asyncio.to_thread(leads, urls[1], operator):
            await asyncio.sleep(0.02)
        failover = time.monotonic() - killed
        after = [asyncio.ensure_future(stream(session, urls[1], key, 20)) for _ in range(args.streams)]
        before = await asyncio.gather(*running)
        served = await asyncio.gather(*after)
    through_leader = args.streams // 2 + args.streams % 2
    return {
        "failover": failover,
        "cut": sum(1 for index, ok in enumerate(before) if not ok and index % 2 == 0),
        "before_ok": sum(1 for index, ok in enumerate(before) if ok and index % 2 == 1),
        "after": len(served),
        "lost": sum(1 for ok in served if not ok),
        "through_leader": through_leader,
    }


if __name__ == "__main__":
    main()
