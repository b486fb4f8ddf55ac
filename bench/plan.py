"""Planning at scale: 1,000 hives x 10 models x 100 worker specs per hive (10 models on 10 devices each).

Times make_plan for a cold start (nothing observed running) and for a matching fleet (every replica running),
against a baseline measured in the same run: one plain pass that reads every worker spec and every observed
worker into dicts, the least work any planner must do. Target: each plan under 1 s.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

from rbee import __version__
from rbee.api.state import CatalogEntry, HiveObservation, HiveState, HiveStatus, ObservedState, WorkerInfo
from rbee.plan import planner
from rbee.spec.schema import HiveFile, HiveSpec, ModelSpec, WorkerSpec


def build(hives: int, models: int, devices: int) -> tuple[HiveFile, ObservedState, ObservedState]:
    model_specs = tuple(ModelSpec(name=f"m{i}", source=f"hf://org/m{i}/m{i}.gguf") for i in range(models))
    hive_specs = tuple(
        HiveSpec(name=f"h{i}", connection={"ssh": {"host": f"h{i}.lab"}})
        for i in range(hives)  # type: ignore[arg-type]
    )
    workers = tuple(
        WorkerSpec(model=f"m{m}", hive=f"h{h}", backend="gguf", device=f"cuda:{d}", replicas=1)
        for h in range(hives)
        for m in range(models)
        for d in range(devices)
    )
    spec = HiveFile(hives=hive_specs, models=model_specs, workers=workers)
    cold = ObservedState(
        hives=tuple(
            HiveObservation(name=f"h{i}", status=HiveStatus.DOWN, reason="nothing listens") for i in range(hives)
        )
    )
    catalog = tuple(
        CatalogEntry(name=f"m{i}", source=f"hf://org/m{i}/m{i}.gguf", format="gguf", size_bytes=4_000_000_000)
        for i in range(models)
    )
    running = ObservedState(
        hives=tuple(
            HiveObservation(
                name=f"h{h}",
                status=HiveStatus.RUNNING,
                installed=True,
                state=HiveState(
                    name=f"h{h}",
                    version=__version__,
                    catalog=catalog,
                    workers=tuple(
                        WorkerInfo(
                            id=f"w-{m}-{d}",
                            model=f"m{m}",
                            backend="gguf",
                            requested_backend="gguf",
                            device=f"cuda:{d}",
                            requested_device=f"cuda:{d}",
                            state="idle",
                        )  # type: ignore[arg-type]
                        for m in range(models)
                        for d in range(devices)
                    ),
                ),
            )
            for h in range(hives)
        )
    )
    return spec, cold, running


def baseline(spec: HiveFile, observed: ObservedState) -> int:
    specs = {(w.hive, w.model, w.backend, w.device): w.replicas for w in spec.workers}
    live = {(hive, w.model, w.requested_backend, w.requested_device): w.state for hive, w in observed.workers()}
    return len(specs) + len(live)


def best_of(runs: int, fn: Callable[[], object]) -> float:
    best = float("inf")
    for _ in range(runs):
        started = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - started)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--hives", type=int, default=1000)
    parser.add_argument("--models", type=int, default=10)
    parser.add_argument("--devices", type=int, default=10)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()

    spec, cold, running = build(args.hives, args.models, args.devices)
    base = best_of(args.runs, lambda: baseline(spec, running))
    cold_s = best_of(args.runs, lambda: planner.make_plan(spec, cold))
    noop_s = best_of(args.runs, lambda: planner.make_plan(spec, running))
    cold_plan, noop_plan = planner.make_plan(spec, cold), planner.make_plan(spec, running)
    assert noop_plan.summary.has_changes is False, "the matching fleet must plan no changes"
    print(
        f"worker specs: {len(spec.workers)}; cold plan: {len(cold_plan.changes)} changes in {cold_s:.3f} s; "
        f"no-change plan: {len(noop_plan.changes)} no-ops in {noop_s:.3f} s; baseline pass {base:.3f} s"
    )
    worst = max(cold_s, noop_s)
    print(
        f"RESULT plan hives={args.hives} models={args.models} worker_specs={len(spec.workers)} "
        f"cold_s={cold_s:.3f} noop_s={noop_s:.3f} baseline_s={base:.3f} ratio={worst / base:.1f} "
        f"target_s=1.0 target_met={'yes' if worst < 1.0 else 'no'}"
    )


if __name__ == "__main__":
    main()
