"""Conditions, like Kubernetes': per target of a plan, one of Ready / Progressing / Degraded / Unreachable, with
a reason word, a sentence, and since when. Pure: the reconciler hands in the plan of its pass, what executing
it did, the restart record of each target and the previous conditions, and gets the new ones back."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Any

from rbee.api.state import HiveStatus, ObservedState, WorkerState
from rbee.plan.actions import Action, Change, Plan, Symbol

CRASH_LOOP = 3
"""A target the reconciler had to act on this many times in a row, without it staying converged, is Degraded."""


class ConditionType(StrEnum):
    READY = "Ready"
    PROGRESSING = "Progressing"
    DEGRADED = "Degraded"
    UNREACHABLE = "Unreachable"


_SEVERITY = {
    ConditionType.READY: 0,
    ConditionType.PROGRESSING: 1,
    ConditionType.DEGRADED: 2,
    ConditionType.UNREACHABLE: 3,
}


@dataclass(frozen=True, slots=True)
class Condition:
    hive: str
    target: str
    type: ConditionType
    reason: str
    """One CamelCase word: Converged, Applied, Applying, Pending, Loading, ApplyFailed, BackOff, CrashLoop,
    Blocked, HiveUnreachable."""
    message: str
    since: float
    """Wall-clock time at which the target entered this condition type."""

    @property
    def key(self) -> str:
        return target_key(self.hive, self.target)

    def to_json(self) -> dict[str, Any]:
        return {
            "hive": self.hive,
            "target": self.target,
            "type": str(self.type),
            "reason": self.reason,
            "message": self.message,
            "since": self.since,
        }


@dataclass(frozen=True, slots=True)
class Attempts:
    """How often the reconciler has acted on one target without it staying converged since."""

    count: int = 0
    last_error: str | None = None
    retry_at: float = 0.0
    """Wall-clock time before which the target is not acted on again."""


def target_key(hive: str, target: str) -> str:
    return f"{hive}/{target}"


def change_key(change: Change) -> str:
    return target_key(change.hive, change.target)


def derive(
    plan: Plan,
    observed: ObservedState,
    results: Mapping[str, str | None],
    attempts: Mapping[str, Attempts],
    previous: Mapping[str, Condition],
    now: float,
) -> dict[str, Condition]:
    """The condition of every target in `plan`. `results` maps the ids of executed changes to their error (None
    when it succeeded); an actionable change missing from it was held back (backing off)."""
    loading = _loading_groups(observed)
    unreachable = {hive.name for hive in observed.hives if hive.status is HiveStatus.UNREACHABLE}
    found: dict[str, tuple[ConditionType, str, str]] = {}
    for change in plan.changes:
        key = change_key(change)
        verdict = _judge(change, results, attempts.get(key, Attempts()), loading, unreachable, now)
        held = found.get(key)
        if held is None or _SEVERITY[verdict[0]] > _SEVERITY[held[0]]:
            found[key] = verdict
    conditions = {}
    for key, (kind, reason, message) in found.items():
        hive, _, target = key.partition("/")
        before = previous.get(key)
        since = before.since if before is not None and before.type is kind else now
        conditions[key] = Condition(hive, target, kind, reason, message, since)
    return conditions


def applying(condition: Condition | None, hive: str, target: str, message: str, now: float) -> Condition:
    """The condition of a target while the reconciler acts on it."""
    if condition is not None and condition.type is ConditionType.PROGRESSING:
        return replace(condition, reason="Applying", message=message)
    return Condition(hive, target, ConditionType.PROGRESSING, "Applying", message, now)


def _judge(
    change: Change,
    results: Mapping[str, str | None],
    tries: Attempts,
    loading: Mapping[tuple[str, str, str, str], int],
    unreachable: set[str],
    now: float,
) -> tuple[ConditionType, str, str]:
    if change.symbol is Symbol.BLOCKED:
        if change.hive in unreachable and change.action is Action.WAIT:
            return ConditionType.UNREACHABLE, "HiveUnreachable", change.reason
        return ConditionType.DEGRADED, "Blocked", change.reason
    crash_loop = tries.count >= CRASH_LOOP
    if change.is_actionable:
        if change.id not in results:
            wait = max(0.0, tries.retry_at - now)
            last = f"; last error: {tries.last_error}" if tries.last_error else ""
            return ConditionType.DEGRADED, "BackOff", f"{change.reason}; next try in {wait:.0f} s{last}"
        error = results[change.id]
        if error is not None:
            wait = max(0.0, tries.retry_at - now)
            return ConditionType.DEGRADED, "ApplyFailed", f"{error}; next try in {wait:.0f} s"
        if crash_loop:
            return ConditionType.DEGRADED, "CrashLoop", f"acted on {tries.count} times in a row; last: {change.reason}"
        return ConditionType.READY, "Applied", change.reason
    if crash_loop:
        return ConditionType.DEGRADED, "CrashLoop", f"acted on {tries.count} times in a row; now: {change.reason}"
    count = loading.get((change.hive, change.model or "", change.backend or "", change.device or ""), 0)
    if change.model and change.target.startswith("workers ") and count:
        return ConditionType.PROGRESSING, "Loading", f"{count} loading; {change.reason}"
    return ConditionType.READY, "Converged", change.reason


def _loading_groups(observed: ObservedState) -> dict[tuple[str, str, str, str], int]:
    groups: dict[tuple[str, str, str, str], int] = {}
    for hive, worker in observed.workers():
        if worker.state is WorkerState.LOADING:
            key = (hive, *worker.group)
            groups[key] = groups.get(key, 0) + 1
    return groups
