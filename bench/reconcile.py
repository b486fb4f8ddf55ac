"""One no-change reconcile pass over 100 and 1,000 hives: the queen's real Reconciler (HTTP observation,
pure plan, conditions, backoff bookkeeping) against synthetic hives (bench/loads/synthetic_hives.py, a benchmark
load: one process answering `GET /v1/state` on one port per hive).

Target: a pass over 1,000 hives under 2 s, and its CPU time growing linearly (1000-hive / 100-hive <= 12).
Ends with `RESULT reconcile ...`.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from rbee.api.state import ObservedState
from rbee.queen.reconcile import Reconciler
from rbee.spec import load

ROOT = Path(__file__).resolve().parent.parent
PASSES = 15


def spec_text(first_port: int, hives: int) -> str:
    lines = ["hives:"]
    lines += [f"  - {{name: h{i}, listen: '127.0.0.1:{first_port + i}', data_dir: /tmp/h{i}}}" for i in range(hives)]
    lines += ["models:", "  - {name: smol, source: 'file:///models/smol.gguf', idle_timeout: 0}", "workers:"]
    lines += [f"  - {{model: smol, hive: h{i}}}" for i in range(hives)]
    return "\n".join(lines) + "\n"


def measure(hives: int, first_port: int) -> tuple[float, float]:
    """Wall and CPU seconds of one pass over `hives` converged hives: the fastest of PASSES (noise from other
    processes on a shared machine only ever adds time)."""
    load_process = subprocess.Popen(
        [
            sys.executable,
            str(ROOT / "bench" / "loads" / "synthetic_hives.py"),
            "--first-port",
            str(first_port),
            "--hives",
            str(hives),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert load_process.stdout is not None and load_process.stdout.readline().strip() == "READY"
        spec = load.loads(spec_text(first_port, hives), "bench.yaml")
        with tempfile.TemporaryDirectory() as state:
            return asyncio.run(_passes(spec, Path(state), hives))
    finally:
        load_process.kill()
        load_process.wait()


async def _passes(spec: object, state: Path, hives: int) -> tuple[float, float]:
    seen: set[str] = set()

    def saw(observed: ObservedState) -> None:
        seen.update(hive.name for hive in observed.hives if hive.state is not None)

    reconciler = Reconciler(lambda: (1, spec), None, state, state, lambda *_: None, lambda: seen, saw)  # type: ignore[arg-type,return-value]
    walls, cpus = [], []
    try:
        for number in range(PASSES + 1):
            wall, cpu = time.perf_counter(), time.process_time()
            summary = await reconciler.run_pass()
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            bad = [c for c in reconciler.conditions.values() if c.type != "Ready"][:3]
            assert summary is not None and summary.acted == 0, (summary, bad)
            ready = [c for c in reconciler.conditions.values() if c.type == "Ready"]
            assert len(ready) == 3 * hives, f"{len(ready)} of {3 * hives} targets Ready"
            if number:  # the first pass opens the connections
                walls.append(wall)
                cpus.append(cpu)
    finally:
        await reconciler.stop()
    return min(walls), min(cpus)


def main() -> None:
    small_wall, small_cpu = measure(100, 21000)
    large_wall, large_cpu = measure(1000, 22000)
    ratio = large_cpu / small_cpu
    print(f"100 hives:   pass {small_wall * 1000:.0f} ms wall, {small_cpu * 1000:.0f} ms CPU (fastest of {PASSES})")
    print(f"1000 hives:  pass {large_wall * 1000:.0f} ms wall, {large_cpu * 1000:.0f} ms CPU")
    met = large_wall < 2.0 and ratio <= 12
    print(
        f"RESULT reconcile pass100_s={small_wall:.3f} pass1000_s={large_wall:.3f} cpu100_s={small_cpu:.3f} "
        f"cpu1000_s={large_cpu:.3f} cpu_ratio={ratio:.2f} target_met={'yes' if met else 'no'}"
    )


if __name__ == "__main__":
    main()
