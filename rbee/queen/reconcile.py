"""The queen's reconcile loop: observe -> plan -> execute, one pass at a time, every `reconcile_interval` and at
once after each spec change. Level-triggered: a pass reads live state and never acts on what an event said.

Each target the loop acts on is retried with exponential backoff (plan/backoff.py: 2 s doubling, capped at 5
minutes) until it stays converged for a minute; its condition says so (Degraded, with the last error) instead of
a silent loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from apscheduler.schedulers.asyncio import AsyncIOScheduler

from rbee.api.credentials import FleetCredentials
from rbee.api.state import ObservedState
from rbee.apply import executor, lock
from rbee.clients.hive import Progress
from rbee.infra import tls
from rbee.observe import fleet as observe_fleet
from rbee.observe import hives as observe_hives
from rbee.plan import backoff, planner
from rbee.plan import conditions as cond
from rbee.plan.actions import Action, Change, Plan
from rbee.queen.autoscale import Autoscaler
from rbee.queen.events import EventLog
from rbee.queen.fetches import Fetch, Fetches
from rbee.queen.fleet import Fleet
from rbee.queen.leadership import Leadership
from rbee.spec.schema import HiveFile

log = logging.getLogger("rbee.reconcile")
LOCK_RETRY = 1.0
PASS_DEADLINE = 2400.0
"""A pass never holds the apply lock longer: past it, it stops (each pyinfra job's own deadline is shorter)."""
OBSERVE_TIMEOUT = 3.0


@dataclass(frozen=True, slots=True)
class PassSummary:
    number: int
    generation: int
    started: float
    seconds: float
    acted: int
    failed: int
    held_back: int
    skipped: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "number": self.number,
            "generation": self.generation,
            "started": self.started,
            "seconds": round(self.seconds, 4),
            "acted": self.acted,
            "failed": self.failed,
            "held_back": self.held_back,
            "skipped": self.skipped,
        }


class EventReporter:
    """The executor's reporter inside the queen: conditions go Progressing, and begin/end go to the event log."""

    def __init__(self, reconciler: Reconciler) -> None:
        self.reconciler = reconciler
        self.fetching: dict[str, Fetch] = {}

    def begin(self, change: Change) -> None:
        if change.action in (Action.ADD_MODEL, Action.REPLACE_MODEL) and change.model:
            self.fetching[change.id] = self.reconciler.fetches.begin(change.hive, change.model, "reconcile")
        key = cond.change_key(change)
        self.reconciler.conditions[key] = cond.applying(
            self.reconciler.conditions.get(key), change.hive, change.target, change.reason, time.time()
        )
        self.reconciler.events.record("apply", f"{change.hive}/{change.target}", f"{change.action}: {change.reason}")

    def progress(self, change: Change, event: Progress) -> None:
        fetch = self.fetching.get(change.id)
        if fetch is not None:
            Fetches.progress(fetch, event)

    def end(self, change: Change, error: str | None) -> None:
        fetch = self.fetching.pop(change.id, None)
        if fetch is not None:
            Fetches.end(fetch, error)
        outcome = f"{change.action} failed: {error}" if error else f"{change.action} done"
        self.reconciler.events.record("failed" if error else "applied", f"{change.hive}/{change.target}", outcome)


class Reconciler:
    def __init__(
        self,
        fleet: Fleet,
        events: EventLog,
        autoscale: Autoscaler,
        credentials: FleetCredentials,
        lock_dir: Path,
        wheel_dir: Path,
        authority: tls.Authority | None = None,
        leadership: Leadership | None = None,
    ) -> None:
        self.authority = authority
        self.leadership = leadership
        """With several queens on one store, only the leader's passes act (and its commands are fenced)."""
        self.fleet = fleet
        self.events = events
        self.autoscale = autoscale
        """Its parkings in flight end before each observation: a pass never sees a worker half parked."""
        self.credentials = credentials
        self.lock_dir = lock_dir
        self.wheel_dir = wheel_dir
        self.backoff = backoff.Record({}, {})
        self.conditions: dict[str, cond.Condition] = {}
        self.fetches = Fetches()
        """Models being fetched now, by a pass or by the operator: what the web UI's progress bars show."""
        self.last: PassSummary | None = None
        self.passes = 0
        self.generation = 0
        self.client: aiohttp.ClientSession | None = None
        self.scheduler: AsyncIOScheduler | None = None
        self.interval: float | None = None
        self.suspended = fleet.store.suspended
        """Set by `rbee suspend` (maintenance, or tests of the keeper alone): no pass acts until resumed; kept in
        the store, so a restart does not resume it."""
        self._wanted = asyncio.Event()
        self._runner: asyncio.Task[None] | None = None

    # -- running ---------------------------------------------------------------------------------------------

    def start(self, interval: float) -> None:
        self.scheduler = AsyncIOScheduler()
        self.scheduler.start()
        self.schedule(interval)
        self._runner = asyncio.get_running_loop().create_task(self._run())
        self.request()

    def schedule(self, interval: float) -> None:
        if self.scheduler is None or interval == self.interval:
            return
        self.interval = interval
        self.scheduler.add_job(
            self.request, "interval", seconds=interval, id="reconcile", replace_existing=True, coalesce=True
        )

    async def stop(self) -> None:
        if self.scheduler is not None:
            self.scheduler.shutdown(wait=False)
        if self._runner is not None:
            self._runner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._runner
        if self.client is not None:
            await self.client.close()

    def request(self) -> None:
        """Ask for a pass: it runs as soon as the one in progress (if any) ends; requests meanwhile merge."""
        self._wanted.set()

    def spec_changed(self, generation: int) -> None:
        """A new desired state: forget the backoff earned under the old one and reconcile at once."""
        if generation != self.generation:
            self.backoff = backoff.Record({}, {})
        self.request()

    async def _run(self) -> None:
        while True:
            await self._wanted.wait()
            self._wanted.clear()
            try:
                async with asyncio.timeout(PASS_DEADLINE):
                    summary = await self.run_pass()
            except TimeoutError:
                self.events.record(
                    "failed", "queen", f"a reconcile pass ran past {PASS_DEADLINE:.0f} s and was stopped"
                )
                summary = None
            except Exception as error:
                log.exception("a reconcile pass failed")
                self.events.record("reconcile", "queen", f"the pass failed: {error}")
                summary = None
            if summary is not None and summary.skipped == "locked":
                asyncio.get_running_loop().call_later(LOCK_RETRY, self.request)

    # -- one pass --------------------------------------------------------------------------------------------

    async def run_pass(self) -> PassSummary | None:
        generation, spec = self.fleet.generation, self.fleet.spec
        if spec is None:
            return None
        self.schedule(spec.queen.reconcile_interval)
        started, clock = time.time(), time.perf_counter()
        if self.leadership is not None and not self.leadership.leading:
            return self._finish(PassSummary(self.passes + 1, generation, started, 0.0, 0, 0, 0, "not leading"))
        if self.fleet.store.shared:  # another queen may have been told to suspend or resume
            self.suspended = await asyncio.to_thread(lambda: self.fleet.store.suspended)
        if self.suspended:
            return self._finish(PassSummary(self.passes + 1, generation, started, 0.0, 0, 0, 0, "suspended"))
        with lock.hold(self.lock_dir, wait=False, holder=f"the queen's reconcile pass {self.passes + 1}") as held:
            if not held:
                return self._finish(PassSummary(self.passes + 1, generation, started, 0.0, 0, 0, 0, "locked"))
            await self.autoscale.settle()
            with _gc_paused():  # bounded by the observation timeout; see _gc_paused
                observed = await self.observe(spec)
                plan = planner.make_plan(spec, observed)
                runnable, held_back = backoff.gate(plan, self.backoff.attempts, started)
            results: dict[str, str | None] = {}
            if any(change.is_actionable for change in runnable):
                run = executor.Executor(
                    spec,
                    self.credentials,
                    EventReporter(self),
                    wheel_dir=self.wheel_dir,
                    authority=self.authority,
                    fence=self.leadership.fence if self.leadership else None,
                )
                results = await run.execute(Plan(runnable))
            with _gc_paused():
                self.backoff = backoff.account(self.backoff, plan, results, time.time())
                self.conditions = cond.derive(
                    plan, observed, results, self.backoff.attempts, self.conditions, time.time()
                )
        failed = sum(1 for error in results.values() if error)
        summary = PassSummary(
            self.passes + 1, generation, started, time.perf_counter() - clock, len(results), failed, len(held_back)
        )
        if results or held_back:
            self.events.record(
                "reconcile",
                "fleet",
                f"pass {summary.number} (generation {generation}): {len(results)} changes, {failed} failed, "
                f"{len(held_back)} backing off, {summary.seconds:.2f} s",
            )
        return self._finish(summary)

    def _finish(self, summary: PassSummary) -> PassSummary:
        self.passes = summary.number
        self.generation = summary.generation
        self.last = summary
        return summary

    async def observe(self, spec: HiveFile) -> ObservedState:
        if self.client is None:
            self.client = observe_hives.make_client()
        observed = await observe_fleet.observe_async(
            spec, self.fleet.seen_hives(), OBSERVE_TIMEOUT, client=self.client, credentials=self.credentials
        )
        self.fleet.saw(observed)
        return observed

    async def look(self, spec: HiveFile) -> ObservedState:
        """Observe the hives of `spec` without taking it as the fleet's state (a plan the web UI asks for), on a
        connection pool of its own that closes with it."""
        return await observe_fleet.observe_async(
            spec, self.fleet.seen_hives(), OBSERVE_TIMEOUT, credentials=self.credentials
        )


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    """Pause the cyclic collector while a pass allocates its observation and plan: each collection it set off
    walked the whole (large) spec and observation, which made a pass over 1,000 hives cost 13-23x one over 100
    instead of 8x (bench/reconcile.py). Reference counting still frees what is dropped."""
    paused = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if paused:
            gc.enable()
