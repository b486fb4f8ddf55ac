"""Chaos: 100 clients stream answers through the queen of a real local fleet while its workers and hives are
killed, frozen and thawed at random. Two hives: hive a runs two SmolLM2 workers on llama.cpp (one request at a
time each) and two synthetic workers, hive b two synthetic workers (worker/backends/synthetic.py: real worker
processes of a real hive that stream tokens at a fixed rate, 8 requests at once, with no model behind them), so
the faults land on many concurrent streams as well as on real engines. A third of the clients ask SmolLM2.
Nothing may hang, no slot may be left held, no process may be left behind, and every stream cut by a fault
must say so soon after the fault.

    python bench/chaos.py --seconds 600     # the default; CI-sized runs pass e.g. --seconds 60

Per request: completed (ended with [DONE] and no error), errored (its stream was cut: an error after it had
begun to send text, or no [DONE]), refused (an error before any text: the queue's deadline, no worker left), or
hung (no byte for HUNG_AFTER seconds). `max_error_after_stop_s` is, over cut streams, the time from the latest
fault before the cut to the error the client read; the target is 0 hung, 0 leaked slots, 0 orphans, and every
cut within 2 s of a kill and within the stream idle timeout + 2 s of a freeze.

RESULT chaos streams=... completed=... errored=... hung=... max_error_after_stop_s=... leaked_slots=...
orphans=... target_met=yes|no
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.fleet import Fleet  # noqa: E402
from tests.models import fetch_smollm2  # noqa: E402
from tests.servers import free_port  # noqa: E402

IDLE = 5.0
"""The queen's stream idle timeout in this run."""
HUNG_AFTER = 45.0
"""A client that got no byte this long, with no fault in the last IDLE + 10 s, is hung."""
KILL_BOUND = 2.0
FREEZE_BOUND = IDLE + 2.0


@dataclass
class Fault:
    at: float
    kind: str
    """kill-worker, freeze-worker, kill-hive, freeze-hive"""
    pid: int


@dataclass
class Outcome:
    completed: int = 0
    errored: int = 0
    refused: int = 0
    hung: int = 0
    error_times: list[float] = field(default_factory=list)
    """When each cut stream's client read its error."""
    error_codes: list[str] = field(default_factory=list)
    by_model: dict[str, dict[str, int]] = field(default_factory=dict)
    """Per model: how many requests ended each way."""

    def count(self, model: str, how: str) -> None:
        setattr(self, how, getattr(self, how) + 1)
        tally = self.by_model.setdefault(model, {})
        tally[how] = tally.get(how, 0) + 1


def rbee_pids(fleet: Fleet, what: str) -> list[int]:
    return [pid for pid, command in fleet.ours() if f"rbee {what} serve" in command]


async def client(session: aiohttp.ClientSession, fleet: Fleet, until: float, outcome: Outcome, model: str) -> None:
    body = {"model": model, "prompt": "Count: 1, 2, 3,", "max_tokens": 16, "stream": True, "temperature": 0}
    while time.monotonic() < until:
        try:
            async with session.post(f"{fleet.queen_url}/v1/completions", json=body, headers=fleet.keyed) as response:
                if response.status != 200:
                    outcome.count(model, "refused")
                    await response.read()
                    await asyncio.sleep(0.5)
                    continue
                tail, error, text, hung = b"", False, False, False
                while True:
                    try:
                        chunk = await asyncio.wait_for(response.content.readany(), HUNG_AFTER)
                    except TimeoutError:
                        hung = True
                        break
                    if not chunk:
                        break
                    tail = (tail + chunk)[-4096:]
                    error = error or b'"error"' in chunk
                    text = text or (b'"text":' in chunk and not error)
                if hung:
                    outcome.count(model, "hung")
                elif not error and b"[DONE]" in tail:
                    outcome.count(model, "completed")
                elif text:
                    outcome.count(model, "errored")
                    outcome.error_times.append(time.monotonic())
                    found = re.search(rb'"code":"?([a-z_]*)', tail)
                    outcome.error_codes.append(found.group(1).decode() if found else "no end")
                else:
                    outcome.count(model, "refused")
                    await asyncio.sleep(0.5)  # refused before any text: no worker is left; ask again soon
        except aiohttp.ClientError:
            outcome.count(model, "refused")
            await asyncio.sleep(0.5)


async def chaos(fleet: Fleet, until: float, faults: list[Fault], rng: random.Random) -> None:
    frozen: list[tuple[float, int]] = []
    while time.monotonic() < until:
        await asyncio.sleep(rng.uniform(6.0, 15.0))  # room between faults for the fleet to heal and serve
        for thaw_at, pid in [item for item in frozen if item[0] <= time.monotonic()]:
            frozen.remove((thaw_at, pid))
            with _gone():
                os.kill(pid, signal.SIGCONT)
        workers, hives = rbee_pids(fleet, "worker"), rbee_pids(fleet, "hive")
        kind = rng.choice(["kill-worker", "kill-worker", "freeze-worker", "freeze-worker", "kill-hive", "freeze-hive"])
        targets = workers if kind.endswith("worker") else hives
        if not targets or time.monotonic() >= until - 5:
            continue
        pid = rng.choice(targets)
        with _gone():
            if kind.startswith("kill"):
                os.kill(pid, signal.SIGKILL)
            else:
                os.kill(pid, signal.SIGSTOP)
                frozen.append((time.monotonic() + rng.uniform(3.0, 12.0), pid))
        faults.append(Fault(time.monotonic(), kind, pid))
    for _, pid in frozen:
        with _gone():
            os.kill(pid, signal.SIGCONT)


class _gone:
    """Ignore a process that exited already."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: object, *_: object) -> bool:
        return kind is ProcessLookupError


def error_delay(error_at: float, faults: list[Fault]) -> tuple[float, bool] | None:
    """The delay from the fault that explains a cut to the error its client read, and whether it came within
    that fault's bound: the nearest earlier fault within whose bound it falls, else the latest earlier one (late).
    None when no fault came before it."""
    before = [fault for fault in faults if fault.at <= error_at]
    if not before:
        return None
    for fault in reversed(before):
        bound = KILL_BOUND if fault.kind.startswith("kill") else FREEZE_BOUND
        if error_at - fault.at <= bound:
            return error_at - fault.at, True
    return error_at - before[-1].at, False


async def run(fleet: Fleet, seconds: float, streams: int, seed: int) -> tuple[Outcome, list[Fault]]:
    until = time.monotonic() + seconds
    outcome, faults = Outcome(), []
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=10)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0), timeout=timeout) as session:
        await asyncio.gather(
            chaos(fleet, until, faults, random.Random(seed)),
            *(client(session, fleet, until, outcome, "smollm2" if i % 3 == 0 else "synthetic") for i in range(streams)),
        )
    return outcome, faults


def leaked_slots(fleet: Fleet, settle: float = 60.0) -> int:
    """In-flight requests the queen still counts once every client has gone (after it has had time to settle)."""
    deadline = time.monotonic() + settle
    while True:
        status = httpx.get(f"{fleet.queen_url}/v2/status", headers=fleet.operator, timeout=10).json()
        held = sum(int(route["in_flight"]) for route in status["routes"]) + sum(status["queues"].values())
        if held == 0 or time.monotonic() > deadline:
            return held
        time.sleep(1.0)


def two_hive_fleet(root: Path, source: str) -> Fleet:
    queen_port, port_a, port_b = free_port(), free_port(), free_port()
    queen = f"heartbeat_interval: 1s, stream_idle_timeout: {IDLE:g}s, queue_timeout: 20s, max_queue: 1000"
    spec = root / "hive.yaml"
    spec.write_text(
        f"queen: {{listen: '127.0.0.1:{queen_port}', reconcile_interval: 2s, {queen}}}\n"
        "hives:\n"
        f"  - {{name: a, listen: '127.0.0.1:{port_a}', data_dir: '{root / 'a'}'}}\n"
        f"  - {{name: b, listen: '127.0.0.1:{port_b}', data_dir: '{root / 'b'}'}}\n"
        "models:\n"
        f"  - {{name: smollm2, source: '{source}', idle_timeout: 0}}\n"
        f"  - {{name: synthetic, source: '{source}', idle_timeout: 0}}\n"
        "workers:\n"
        "  - {model: smollm2, hive: a, replicas: 2}\n"
        "  - {model: synthetic, hive: a, replicas: 2, backend: synthetic}\n"
        "  - {model: synthetic, hive: b, replicas: 2, backend: synthetic}\n"
    )
    env = {**os.environ, "RBEE_HOME": str(root / "home"), "NO_COLOR": "1"}
    env.pop("RBEE_API_KEY", None)
    return Fleet(root, spec, f"http://127.0.0.1:{queen_port}", f"http://127.0.0.1:{port_a}", env)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=600.0)
    parser.add_argument("--streams", type=int, default=100)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--keep", action="store_true", help="keep the fleet's folder (logs) afterwards")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="rbee-chaos-"))
    model = fetch_smollm2(Path(os.environ.get("RBEE_BENCH_CACHE", tempfile.gettempdir())) / "rbee-smollm2")
    fleet = two_hive_fleet(work, f"file://{model}")
    orphans = -1
    try:
        applied = fleet.rbee("apply", str(fleet.spec), "--yes")
        if applied.returncode != 0:
            raise SystemExit(applied.stdout + applied.stderr)
        outcome, faults = asyncio.run(run(fleet, args.seconds, args.streams, args.seed))
        for pid in rbee_pids(fleet, "worker") + rbee_pids(fleet, "hive"):
            with _gone():
                os.kill(pid, signal.SIGCONT)
        leaked = leaked_slots(fleet)
    finally:
        fleet.rbee("destroy", str(fleet.spec), "--yes")
        orphans = len(fleet.ours())
        if args.keep:
            print(f"kept {work} (its hives' logs are in a/logs and b/logs)")
        else:
            subprocess.run(["rm", "-rf", str(work)], check=False)

    delays = [found for at in outcome.error_times if (found := error_delay(at, faults)) is not None]
    late_codes: dict[str, int] = {}
    for at, code in zip(outcome.error_times, outcome.error_codes, strict=True):
        found = error_delay(at, faults)
        if found is None or not found[1]:
            before = [fault for fault in faults if fault.at <= at]
            name = f"{code} after {before[-1].kind if before else 'no fault'}"
            if args.keep and before:
                wall = time.strftime("%H:%M:%S", time.localtime(time.time() - (time.monotonic() - at)))
                print(f"late: {code} at {wall}, {at - before[-1].at:.2f} s after {before[-1]}")
            late_codes[name] = late_codes.get(name, 0) + 1
    worst = max((delay for delay, _ in delays), default=0.0)
    late = sum(1 for _, on_time in delays if not on_time) + len(outcome.error_times) - len(delays)
    total = outcome.completed + outcome.errored + outcome.refused + outcome.hung
    kinds = {kind: sum(1 for fault in faults if fault.kind == kind) for kind in sorted({f.kind for f in faults})}
    print(f"faults: {kinds}; errors later than their bound: {late} of {len(delays)} {late_codes or ''}")
    print(f"per model: {outcome.by_model}")
    met = outcome.hung == 0 and leaked == 0 and orphans == 0 and late == 0
    print(
        f"RESULT chaos seconds={args.seconds:g} streams={total} completed={outcome.completed} "
        f"errored={outcome.errored} refused={outcome.refused} hung={outcome.hung} faults={len(faults)} "
        f"max_error_after_stop_s={worst:.2f} late_errors={late} leaked_slots={leaked} orphans={orphans} "
        f"target_met={'yes' if met else 'no'}"
    )


if __name__ == "__main__":
    main()
