"""Backoff per target of the reconcile loop, as pure decisions: which changes of a plan a pass may act on, and
what a pass's results do to each target's restart record.

A target the loop acts on is retried with exponential backoff (2 s doubling, capped at 5 minutes) until it stays
converged for a minute; then its record is forgotten. No I/O here.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from rbee.plan.actions import Change, Plan
from rbee.plan.conditions import Attempts, change_key

BASE_DELAY = 2.0
MAX_DELAY = 300.0
STABLE = 60.0
"""A target converged this long has its restart count forgotten."""


def gate(plan: Plan, attempts: Mapping[str, Attempts], now: float) -> tuple[tuple[Change, ...], list[Change]]:
    """The plan's changes this pass may act on, and those held back: targets backing off, and their dependants."""
    held: set[str] = set()
    kept: list[Change] = []
    for change in plan.changes:
        tries = attempts.get(change_key(change))
        waiting = change.is_actionable and tries is not None and tries.retry_at > now
        if waiting or any(required in held for required in change.requires):
            held.add(change.id)
            continue
        kept.append(change)
    return tuple(kept), [change for change in plan.changes if change.id in held]


@dataclass(frozen=True, slots=True)
class Record:
    """Each target's restart record, and since when each converged target has stayed so."""

    attempts: Mapping[str, Attempts]
    converged_since: Mapping[str, float]


def account(record: Record, plan: Plan, results: Mapping[str, str | None], now: float) -> Record:
    """The record after a pass: `results` maps the executed changes' ids to their error (None for success)."""
    attempts, converged = dict(record.attempts), dict(record.converged_since)
    acted: dict[str, str | None] = {}
    for change in plan.changes:
        key = change_key(change)
        if change.id in results:
            error = results[change.id]
            acted[key] = acted.get(key) or error
        elif not change.is_actionable:
            since = converged.setdefault(key, now)
            if now - since >= STABLE:
                attempts.pop(key, None)
    for key, error in acted.items():
        converged.pop(key, None)
        count = attempts.get(key, Attempts()).count + 1
        delay = min(BASE_DELAY * 2 ** (count - 1), MAX_DELAY)
        attempts[key] = Attempts(count, error, now + delay)
    return Record(attempts, converged)
