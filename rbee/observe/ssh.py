"""When an SSH hive's daemon does not answer over HTTP, look at the machine over SSH (rbee's pyinfra facts, in
a subprocess): installed but stopped, not installed, and host unreachable are different states, planned
differently (start; install and start; wait)."""

from __future__ import annotations

import asyncio

from rbee.api.state import HiveObservation, HiveStatus, ObservedState
from rbee.infra import job
from rbee.spec.schema import HiveFile


def examine(spec: HiveFile, observed: ObservedState, timeout: float) -> ObservedState:
    return asyncio.run(examine_async(spec, observed, timeout))


async def examine_async(spec: HiveFile, observed: ObservedState, timeout: float) -> ObservedState:
    silent = [hive for hive in observed.hives if hive.status is not HiveStatus.RUNNING]
    remote = [spec.hive(hive.name) for hive in silent]
    targets = [hive for hive in remote if hive is not None and hive.ssh is not None]
    if not targets:
        return observed
    results = await job.run(job.job_for(targets, [job.Step.FACTS], None, connect_timeout=max(1, round(timeout))))
    return ObservedState(hives=tuple(_combine(hive, results.get(hive.name)) for hive in observed.hives))


def _combine(observation: HiveObservation, result: job.HostResult | None) -> HiveObservation:
    if result is None:
        return observation
    facts = result.facts
    if facts is None:
        reason = f"{observation.reason}; SSH: {result.error or 'no answer'}"
        return observation.model_copy(update={"status": HiveStatus.UNREACHABLE, "reason": reason})
    if facts.host is not None:
        observation = observation.model_copy(update={"host": facts.host})
    if facts.pid:
        why = f"the daemon runs (pid {facts.pid}) but its API does not answer ({observation.reason})"
        return observation.model_copy(update={"status": HiveStatus.UNREACHABLE, "reason": why, "installed": True})
    installed = facts.installed
    why = "rbee is installed and its daemon is stopped" if installed else "rbee is not installed"
    return observation.model_copy(update={"status": HiveStatus.DOWN, "reason": why, "installed": installed})
