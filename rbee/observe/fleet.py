"""Observing a whole fleet: every hive's API at once, then over SSH the SSH hives that did not answer, and one
rule for which hives rbee has seen before (an unreachable hive seen before waits; one never seen is planned
from scratch). The keeper's plan and the queen's reconcile pass both observe this way."""

from __future__ import annotations

import asyncio
from collections.abc import Set

import aiohttp

from rbee.api.credentials import FleetCredentials
from rbee.api.state import HiveStatus, ObservedState
from rbee.observe import hives, ssh
from rbee.spec.schema import HiveFile


def observe(
    spec: HiveFile, seen: Set[str], timeout: float, credentials: FleetCredentials | None = None
) -> ObservedState:
    return asyncio.run(observe_async(spec, seen, timeout, credentials=credentials))


async def observe_async(
    spec: HiveFile,
    seen: Set[str],
    timeout: float,
    *,
    client: aiohttp.ClientSession | None = None,
    credentials: FleetCredentials | None = None,
) -> ObservedState:
    observed = await hives.observe_async(spec, timeout=timeout, client=client, credentials=credentials)
    observed = await ssh.examine_async(spec, observed, timeout)
    return mark_seen(observed, seen)


def mark_seen(observed: ObservedState, seen: Set[str]) -> ObservedState:
    """`seen_before` on each hive: it ran before (`seen`, remembered by the queen), or it runs now."""
    return ObservedState(
        hives=tuple(
            hive.model_copy(update={"seen_before": hive.name in seen or hive.status is HiveStatus.RUNNING})
            for hive in observed.hives
        )
    )
