"""When an SSH hive's daemon does not answer over HTTP, look at the machine over SSH (rbee's pyinfra facts, in
a subprocess): installed but stopped, not installed, and host unreachable are different states, planned
differently (start; install and start; wait)."""

from __future__ import annotations

import asyncio
import contextlib

from rbee.api.state import HiveObservation, HiveStatus, HostFacts, ObservedState
from rbee.apply import executor
from rbee.spec.schema import HiveFile


def examine(spec: HiveFile, observed: ObservedState, timeout: float) -> ObservedState:
    return asyncio.run(examine_async(spec, observed, timeout))


async def examine_async(spec: HiveFile, observed: ObservedState, timeout: float) -> ObservedState:
    silent = [hive for hive in observed.hives if hive.status is not HiveStatus.RUNNING]
    remote = [spec.hive(hive.name) for hive in silent]
    targets = [hive for hive in remote if hive is not None and hive.ssh is not None]
    if not targets:
        return observed
    job = executor.pyinfra_job(targets, ["facts"], "")
    job["connect_timeout"] = max(1, round(timeout))
    results = await executor.run_pyinfra(job)
    return ObservedState(hives=tuple(_combine(hive, results.get(hive.name)) for hive in observed.hives))


def _combine(observation: HiveObservation, result: dict[str, object] | None) -> HiveObservation:
    if result is None:
        return observation
    facts = result.get("facts")
    if not isinstance(facts, dict):
        reason = f"{observation.reason}; SSH: {result.get('error') or 'no answer'}"
        return observation.model_copy(update={"status": HiveStatus.UNREACHABLE, "reason": reason})
    installed = bool(facts.get("installed"))
    found = facts.get("host")
    if isinstance(found, dict):
        # An older rbee on the host may report differently: then its devices are simply not known.
        with contextlib.suppress(ValueError):
            observation = observation.model_copy(update={"host": HostFacts.model_validate(found)})
    if facts.get("pid"):
        why = f"the daemon runs (pid {facts['pid']}) but its API does not answer ({observation.reason})"
        return observation.model_copy(update={"status": HiveStatus.UNREACHABLE, "reason": why, "installed": True})
    why = "rbee is installed and its daemon is stopped" if installed else "rbee is not installed"
    return observation.model_copy(update={"status": HiveStatus.DOWN, "reason": why, "installed": installed})
