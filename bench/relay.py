"""What the queen's relay costs: synthetic token workers (bench/loads/synthetic_worker.py, a benchmark load), the
real queen in its own process, a bare pass-through relay (bench/loads/bare_relay.py: the floor for a Python
relay) and a load generator here; every scenario runs direct-to-worker, through the bare relay and through the
queen in the same run, and prints the ratios.

Targets (#17), against the bare relay measured in the same run:
  single stream: time to first token the queen adds <= 1.5x what the bare relay adds (median);
  100 concurrent streams at 45 tok/s: every token delivered, queen CPU per token <= 1.5x the bare relay's;
  1,000 concurrent streams at 40 tok/s: >= 0.9x the tokens/s delivered direct, no errors (each of direct, bare
  and queen runs twice, in mirrored order);
  admission + scheduling with 1,000 workers and 10,000 queued requests, and prefix routing (the default
  policy) over 1,000 replicas: p95 <= 100 us per decision.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from rbee.clients import tls  # noqa: E402
from rbee.keeper import queen_process  # noqa: E402
from rbee.keeper.home import Home  # noqa: E402
from rbee.queen.admission import Admission  # noqa: E402
from rbee.queen.scheduling import Ask, Route  # noqa: E402
from rbee.spec.schema import HiveFile  # noqa: E402
from tests.federation import start_synthetic  # noqa: E402
from tests.servers import free_port  # noqa: E402

TOKEN = "bench-worker-credential"
"""The synthetic worker takes any credential."""
PATTERN = b'"finish_reason":null'


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def start_bare_relay(port: int, upstream: str, ca_file: Path | None) -> subprocess.Popen[bytes]:
    pinned = ["--ca-file", str(ca_file)] if ca_file else []
    process = subprocess.Popen(
        [
            sys.executable,
            str(ROOT / "bench" / "loads" / "bare_relay.py"),
            "--port",
            str(port),
            "--upstream",
            upstream,
            *pinned,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_http(f"http://127.0.0.1:{port}/health")
    return process


def wait_http(url: str, headers: dict[str, str] | None = None) -> None:
    deadline = time.monotonic() + 30
    while True:
        try:
            if httpx.get(url, headers=headers, timeout=1, verify=tls.context()).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise SystemExit(f"{url} did not come up")
        time.sleep(0.05)


async def stream(
    session: aiohttp.ClientSession, url: str, body: dict[str, object], headers: dict[str, str]
) -> tuple[float, int, str | None]:
    """(seconds to first token, tokens delivered, error) for one streamed request."""
    started = time.perf_counter()
    first, count, tail = None, 0, b""
    try:
        async with session.post(url, json=body, headers=headers) as response:
            if response.status != 200:
                return 0.0, 0, f"HTTP {response.status}"
            async for chunk in response.content.iter_any():
                data = tail + chunk
                found = data.count(PATTERN)
                if found and first is None:
                    first = time.perf_counter() - started
                count += found
                tail = chunk[-(len(PATTERN) - 1) :]
    except aiohttp.ClientError as error:
        return 0.0, count, type(error).__name__
    return first or 0.0, count, None


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


async def single_stream(queen: str, bare: str, worker: str, runs: int, keyed: dict[str, str]) -> dict[str, float]:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0, ssl=tls.context())) as session:
        direct_body = {"request_id": "b", "prompt": "x", "max_tokens": 4, "format": "openai-completion"}
        queen_body = {"model": "synthetic", "prompt": "x", "max_tokens": 4, "stream": True}
        auth = {"Authorization": f"Bearer {TOKEN}"}
        for _ in range(5):
            await stream(session, f"{worker}/v1/execute", direct_body, auth)
            await stream(session, f"{bare}/v1/execute", direct_body, auth)
            await stream(session, f"{queen}/v1/completions", queen_body, keyed)
        direct, barely, through = [], [], []
        for _ in range(runs):
            direct.append((await stream(session, f"{worker}/v1/execute", direct_body, auth))[0])
            barely.append((await stream(session, f"{bare}/v1/execute", direct_body, auth))[0])
            through.append((await stream(session, f"{queen}/v1/completions", queen_body, keyed))[0])
    added = [(q - d) * 1000 for q, d in zip(through, direct, strict=True)]
    bare_added = [(b - d) * 1000 for b, d in zip(barely, direct, strict=True)]
    return {
        "direct_ms": statistics.median(direct) * 1000,
        "bare_ms": statistics.median(barely) * 1000,
        "queen_ms": statistics.median(through) * 1000,
        "added_median_ms": statistics.median(added),
        "added_p95_ms": percentile(added, 0.95),
        "bare_added_median_ms": statistics.median(bare_added),
    }


async def concurrent(url: str, body: dict[str, object], headers: dict[str, str], streams: int) -> dict[str, float]:
    connector = aiohttp.TCPConnector(limit=0, ssl=tls.context())
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=30, sock_read=60)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        started = time.perf_counter()
        results = await asyncio.gather(*(stream(session, url, body, headers) for _ in range(streams)))
        elapsed = time.perf_counter() - started
    tokens = sum(result[1] for result in results)
    errors = [result[2] for result in results if result[2]]
    return {"tokens": tokens, "seconds": elapsed, "tokens_per_s": tokens / elapsed, "errors": len(errors)}


def together(passes: list[dict[str, float]]) -> dict[str, float]:
    """Passes of one scenario as one: their tokens over their seconds."""
    tokens, seconds = sum(run["tokens"] for run in passes), sum(run["seconds"] for run in passes)
    errors = sum(run["errors"] for run in passes)
    return {"tokens": tokens, "seconds": seconds, "tokens_per_s": tokens / seconds, "errors": errors}


def admission_decisions(workers: int, queued: int) -> dict[str, float]:
    async def run() -> dict[str, float]:
        admission = Admission(max_queue=queued + 10)
        routes = [Route(f"w-{i}", f"h-{i % 50}", "m", f"http://127.0.0.1:{i}") for i in range(workers)]
        admission.sync(routes)
        immediate = []
        tickets = []
        for _ in range(workers):
            began = time.perf_counter_ns()
            tickets.append(await admission.acquire(Ask("m"), 30.0))
            immediate.append(time.perf_counter_ns() - began)
        waiting = [asyncio.ensure_future(admission.acquire(Ask("m"), 30.0)) for _ in range(queued)]
        await asyncio.sleep(0)
        dispatch = []
        for ticket in tickets:  # each release hands a worker to the head of a 10,000-deep queue
            began = time.perf_counter_ns()
            ticket.release()
            dispatch.append(time.perf_counter_ns() - began)
        await asyncio.sleep(0)
        for task in waiting:
            if task.done():
                task.result().release()
            else:
                task.cancel()
        await asyncio.gather(*waiting, return_exceptions=True)
        return {
            "admit_p95_us": percentile(immediate, 0.95) / 1000,
            "dispatch_p95_us": percentile(dispatch, 0.95) / 1000,
            "prefix_p95_us": await prefix_decisions(routes),
        }

    async def prefix_decisions(routes: list[Route]) -> float:
        """The default policy's decision (prefix routing over 1,000 replicas of one model), each request
        admitted and released: one hash and a bisection on a ring built once."""
        admission = Admission(max_queue=10)
        admission.sync([Route(r.worker_id, r.hive, r.model, r.url, slots=4) for r in routes])
        spent = []
        for i in range(5000):
            ask = Ask("m", None, None, 600, f"system prompt {i % 97}: you are a helpful assistant")
            began = time.perf_counter_ns()
            ticket = await admission.acquire(ask, 30.0)
            spent.append(time.perf_counter_ns() - began)
            ticket.release()
        return percentile(spent, 0.95) / 1000

    return asyncio.run(run())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--single-runs", type=int, default=200)
    parser.add_argument("--big", type=int, default=1000, help="streams in the large scenario")
    parser.add_argument("--seconds", type=float, default=4.0, help="length of each concurrent stream")
    parser.add_argument(
        "--tls",
        choices=("on", "off", "both"),
        default="both",
        help="workers serve TLS (as every hive off this machine does) or plain HTTP; both: one run of each",
    )
    args = parser.parse_args()
    if args.tls == "both":  # each in its own process: a process pins one CA, once
        for mode in ("off", "on"):
            command = [sys.executable, __file__, "--tls", mode, "--single-runs", str(args.single_runs)]
            command += ["--big", str(args.big), "--seconds", str(args.seconds)]
            if subprocess.run(command, check=False).returncode != 0:
                raise SystemExit(1)
        return
    run(args)


def run(args: argparse.Namespace) -> None:
    work = Path(tempfile.mkdtemp(prefix="rbee-relay-"))
    home = Home(work)
    credentials, admin_key = home.credentials(create=True), home.admin_key(create=True)
    assert credentials is not None
    synthetic_port, queen_port, bare_port = free_port(), free_port(), free_port()
    scheme = "https" if args.tls == "on" else "http"
    queen_url, worker_url = f"http://127.0.0.1:{queen_port}", f"{scheme}://127.0.0.1:{synthetic_port}"
    bare_url = f"http://127.0.0.1:{bare_port}"
    tls_files = None
    if args.tls == "on":  # the queen reaches the workers over TLS, pinning the fleet CA, as it does on a LAN
        leaf = home.authority.leaf("hive-synthetic", ("127.0.0.1", "localhost"))
        assert leaf
        tls_files = (
            str(home.authority.folder / "hive-synthetic.pem"),
            str(home.authority.folder / "hive-synthetic.key"),
        )
        tls.pin(home.authority.ca_file)
    synthetic = start_synthetic(synthetic_port, 100, 10, 45.0, tls_files)
    bare = start_bare_relay(bare_port, worker_url, home.authority.ca_file if tls_files else None)
    spec = HiveFile.model_validate(
        {
            "queen": {"listen": f"127.0.0.1:{queen_port}", "max_queue": 100000, "queue_timeout": 60},
            "hives": [
                {
                    "name": "synthetic",
                    "listen": f"127.0.0.1:{synthetic_port}",
                    "transport": "tls" if args.tls == "on" else "auto",
                }
            ],
            "models": [{"name": "synthetic", "source": "file:///synthetic.gguf"}],
            "workers": [{"model": "synthetic", "hive": "synthetic", "replicas": 100}],
        }
    )
    auth = {"Authorization": f"Bearer {TOKEN}"}
    keyed = {"Authorization": f"Bearer {admin_key}"}
    try:
        queen, _ = queen_process.ensure_running(spec, home, credentials.operator)  # the queen rbee apply starts
        queen_pid = int(str((home.queen() or {})["pid"]))
        # The synthetic hive is a stand-in: the loop must not "heal" it (install a real hive in its place, in
        # ~/.local/share/rbee) when the bench restarts the synthetic process between scenarios.
        queen.set_suspended(True)
        queen.push_spec(spec, "bench", None)
        while len(queen.status()["routes"]) < 100:
            time.sleep(0.05)

        single = asyncio.run(single_stream(queen_url, bare_url, worker_url, args.single_runs, keyed))
        print(
            f"single stream: ttft direct {single['direct_ms']:.2f} ms, bare relay {single['bare_ms']:.2f} ms, "
            f"queen {single['queen_ms']:.2f} ms; the queen adds {single['added_median_ms']:.2f} ms at the median "
            f"(p95 {single['added_p95_ms']:.2f}), the bare relay {single['bare_added_median_ms']:.2f} ms"
        )

        tokens = int(45 * args.seconds)
        direct_body = {"request_id": "b", "prompt": "x", "max_tokens": tokens, "format": "openai-completion"}
        queen_body = {"model": "synthetic", "prompt": "x", "max_tokens": tokens, "stream": True}
        direct100 = asyncio.run(concurrent(f"{worker_url}/v1/execute", direct_body, auth, 100))
        cpu_before = cpu_seconds(bare.pid)
        bare100 = asyncio.run(concurrent(f"{bare_url}/v1/execute", direct_body, auth, 100))
        bare_cpu_ms_per_1k = (cpu_seconds(bare.pid) - cpu_before) * 1000 / max(bare100["tokens"], 1) * 1000
        cpu_before = cpu_seconds(queen_pid)
        queen100 = asyncio.run(concurrent(f"{queen_url}/v1/completions", queen_body, keyed, 100))
        cpu_ms_per_1k = (cpu_seconds(queen_pid) - cpu_before) * 1000 / max(queen100["tokens"], 1) * 1000
        print(
            f"100 streams x {tokens} tokens at 45 tok/s: direct {direct100['tokens']:.0f} tokens, bare relay "
            f"{bare100['tokens']:.0f}, queen {queen100['tokens']:.0f} ({queen100['errors']:.0f} errors); CPU per "
            f"1,000 tokens: queen {cpu_ms_per_1k:.1f} ms, bare relay {bare_cpu_ms_per_1k:.1f} ms"
        )

        synthetic.send_signal(signal.SIGTERM)
        synthetic.wait(10)
        synthetic = start_synthetic(synthetic_port, 100, 10, 40.0, tls_files)
        tokens = int(40 * args.seconds)
        direct_body["max_tokens"] = queen_body["max_tokens"] = tokens
        offered = args.big * 40.0
        # Each of the three runs twice, in mirrored order (direct, bare, queen, queen, bare, direct): the machine is
        # saturated here and its speed drifts within a run, which a single pass would charge to whoever ran last.
        scenarios = {
            "direct": (f"{worker_url}/v1/execute", direct_body, auth),
            "bare": (f"{bare_url}/v1/execute", direct_body, auth),
            "queen": (f"{queen_url}/v1/completions", queen_body, keyed),
        }
        passes: dict[str, list[dict[str, float]]] = {name: [] for name in scenarios}
        for name in [*scenarios, *reversed(scenarios)]:
            passes[name].append(asyncio.run(concurrent(*scenarios[name], args.big)))
        direct_big, bare_big, queen_big = (together(passes[name]) for name in scenarios)
        print(
            f"{args.big} streams x {tokens} tokens at 40 tok/s (offered {offered:.0f} tok/s): direct "
            f"{direct_big['tokens_per_s']:.0f} tok/s ({direct_big['errors']:.0f} errors), bare relay "
            f"{bare_big['tokens_per_s']:.0f} tok/s, queen {queen_big['tokens_per_s']:.0f} tok/s "
            f"({queen_big['errors']:.0f} errors)"
        )
    finally:
        queen_process.stop(home)
        bare.terminate()
        bare.wait(10)
        synthetic.send_signal(signal.SIGTERM)
        try:
            synthetic.wait(10)
        except subprocess.TimeoutExpired:
            synthetic.kill()
        subprocess.run(["rm", "-rf", str(work)], check=False)

    decisions = admission_decisions(1000, 10000)
    print(
        f"admission with 1,000 workers and 10,000 queued: admit p95 {decisions['admit_p95_us']:.1f} us, "
        f"dispatch p95 {decisions['dispatch_p95_us']:.1f} us, prefix routing p95 {decisions['prefix_p95_us']:.1f} us"
    )

    all_delivered = queen100["tokens"] == 100 * int(45 * args.seconds) and queen100["errors"] == 0
    big_ratio = queen_big["tokens_per_s"] / offered
    vs_direct = queen_big["tokens_per_s"] / max(direct_big["tokens_per_s"], 1)
    # the bare relay adds a fraction of a millisecond: floor it at 0.05 ms so noise cannot make the ratio explode
    ttft_vs_bare = single["added_median_ms"] / max(single["bare_added_median_ms"], 0.05)
    cpu_vs_bare = cpu_ms_per_1k / max(bare_cpu_ms_per_1k, 0.1)
    met = (
        ttft_vs_bare <= 1.5
        and all_delivered
        and cpu_vs_bare <= 1.5
        and vs_direct >= 0.9
        and queen_big["errors"] == 0
        and max(decisions.values()) <= 100.0
    )
    print(
        json.dumps(
            {
                "single": single,
                "direct100": direct100,
                "bare100": bare100,
                "queen100": queen100,
                "direct_big": direct_big,
                "bare_big": bare_big,
                "queen_big": queen_big,
                "admission": decisions,
            }
        )
    )
    print(
        f"RESULT relay tls={args.tls} ttft_added_median_ms={single['added_median_ms']:.2f} "
        f"bare_ttft_added_median_ms={single['bare_added_median_ms']:.2f} ttft_vs_bare={ttft_vs_bare:.2f} "
        f"streams100_delivered={queen100['tokens']:.0f}/{100 * int(45 * args.seconds)} "
        f"queen_cpu_ms_per_1k_tokens={cpu_ms_per_1k:.1f} bare_cpu_ms_per_1k_tokens={bare_cpu_ms_per_1k:.1f} "
        f"cpu_vs_bare={cpu_vs_bare:.2f} streams{args.big}_delivered_ratio={big_ratio:.3f} "
        f"streams{args.big}_vs_direct={vs_direct:.3f} bare{args.big}_vs_direct="
        f"{bare_big['tokens_per_s'] / max(direct_big['tokens_per_s'], 1):.3f} errors={queen_big['errors']:.0f} "
        f"admission_p95_us={max(decisions.values()):.1f} target_met={'yes' if met else 'no'}"
    )


if __name__ == "__main__":
    main()
