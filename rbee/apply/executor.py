"""Execute a plan exactly: never re-decide, only carry out each change in order and report how it went.

Hive installs and starts run as one pyinfra job over all hosts (in a subprocess); models and workers go
through each hive's HTTP API; hive stops and uninstalls run as a final pyinfra job, after each hive has been
asked over HTTP to stop (it stops its workers first). A change whose prerequisite failed is skipped, with that
as its reason.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Protocol

import httpx

from rbee.api.credentials import FleetCredentials
from rbee.api.state import WorkerGroup, WorkerShape
from rbee.clients.hive import HiveCallError, HiveClient, Progress
from rbee.infra import job, tls
from rbee.infra import wheel as rbee_wheel
from rbee.infra.job import Step
from rbee.plan.actions import PROVIDER_ACTIONS, Action, Change, Plan
from rbee.spec.schema import HiveFile, HiveSpec

HIVE_UP = (Action.INSTALL_HIVE, Action.START_HIVE)
HIVE_DOWN = (Action.STOP_HIVE, Action.UNINSTALL_HIVE)


class Reporter(Protocol):
    def begin(self, change: Change) -> None: ...

    def progress(self, change: Change, event: Progress) -> None: ...

    def end(self, change: Change, error: str | None) -> None: ...


class Executor:
    def __init__(
        self,
        spec: HiveFile,
        credentials: FleetCredentials,
        reporter: Reporter,
        retired: tuple[HiveSpec, ...] = (),
        wheel_dir: Path | None = None,
        authority: tls.Authority | None = None,
        fence: int | None = None,
    ) -> None:
        self.spec = spec
        self.fence = fence
        """The leading queen's lease generation, sent with each command to a hive (several queens on one store)."""
        self.authority = authority
        self.wheel_dir = wheel_dir
        self.retired = {hive.name: hive for hive in retired}
        self.credentials = credentials
        self.reporter = reporter
        self.errors: dict[str, str | None] = {}
        self.stopped_how: dict[str, str] = {}
        """For each hive stopped: `over HTTP`, `by a signal` or `not running` (what destroy reports)."""

    async def execute(self, plan: Plan) -> dict[str, str | None]:
        changes = plan.actionable
        for change in changes:  # the queen takes a provider with the spec apply gives it next
            if change.action in PROVIDER_ACTIONS:
                self.reporter.begin(change)
                self._finish(change, None)
        changes = tuple(change for change in changes if change.action not in PROVIDER_ACTIONS)
        up = [change for change in changes if change.action in HIVE_UP]
        down = [change for change in changes if change.action in HIVE_DOWN]
        middle = [change for change in changes if change.action not in HIVE_UP + HIVE_DOWN]
        if up:
            await self._hive_job(up, (Step.PYTHON, Step.INSTALL, Step.START))
        by_hive: dict[str, list[Change]] = {}
        for change in middle:
            by_hive.setdefault(change.hive, []).append(change)
        await asyncio.gather(*(self._hive_changes(name, items) for name, items in by_hive.items()))
        if down:
            uninstall = {change.hive for change in down if change.action is Action.UNINSTALL_HIVE}
            stop_only = [change for change in down if change.hive not in uninstall]
            with_uninstall = [change for change in down if change.hive in uninstall]
            if stop_only:
                await self._hive_job(stop_only, (Step.STOP,))
            if with_uninstall:
                await self._hive_job(with_uninstall, (Step.STOP, Step.UNINSTALL))
        return self.errors

    def _blocked_by(self, change: Change) -> str | None:
        failed = [required for required in change.requires if self.errors.get(required)]
        return f"skipped: {failed[0]} failed" if failed else None

    def _finish(self, change: Change, error: str | None) -> None:
        self.errors[change.id] = error
        self.reporter.end(change, error)

    async def _hive_job(self, changes: list[Change], steps: tuple[Step, ...]) -> None:
        runnable = []
        for change in changes:
            blocked = self._blocked_by(change)
            if blocked:
                self._finish(change, blocked)
            else:
                runnable.append(change)
                self.reporter.begin(change)
        names = list(dict.fromkeys(change.hive for change in runnable))
        if not names:
            return
        hives = [self._hive_spec(name) for name in names]
        wheel = None
        if Step.PYTHON in steps and any(hive.ssh is not None and hive.python is None for hive in hives):
            try:
                wheel = await asyncio.to_thread(rbee_wheel.build, self.wheel_dir or Path("wheels"))
            except rbee_wheel.WheelError as error:
                for change in runnable:
                    self._finish(change, str(error))
                return
        asked = await self._shutdown_over_http(hives) if Step.STOP in steps else {}
        results = await job.run_jobs(hives, steps, self.credentials, wheel, self.spec, self.authority)
        for hive in hives:
            result = results.get(hive.name)
            if Step.STOP in steps and result is not None:
                self.stopped_how[hive.name] = (
                    "over HTTP" if asked.get(hive.name) else "by a signal" if result.changed else "not running"
                )
        health: dict[str, str | None] = {}
        if Step.START in steps:
            for hive in hives:
                if (result := results.get(hive.name)) is None or result.error:
                    continue
                client = HiveClient(hive, self.credentials.hive(hive.name), self.fence)
                try:
                    await client.wait_healthy()
                    health[hive.name] = None
                except HiveCallError as error:
                    health[hive.name] = str(error)
                finally:
                    await client.close()
        for change in runnable:
            result = results.get(change.hive)
            failure = result.error if result is not None else f"pyinfra gave no result for hive {change.hive}"
            self._finish(change, failure or health.get(change.hive))

    async def _shutdown_over_http(self, hives: list[HiveSpec]) -> dict[str, bool]:
        """Ask each hive to stop (it stops its workers first); the pyinfra stop step then signals any hive that
        did not stop, or could not be asked."""

        async def one(hive: HiveSpec) -> bool:
            client = HiveClient(hive, self.credentials.hive(hive.name), self.fence)
            try:
                return await client.shutdown()
            finally:
                await client.close()

        done = await asyncio.gather(*(one(hive) for hive in hives))
        return {hive.name: stopped for hive, stopped in zip(hives, done, strict=True)}

    def _hive_spec(self, name: str) -> HiveSpec:
        hive = self.spec.hive(name) or self.retired.get(name)
        if hive is None:
            raise HiveCallError(f"hive {name} is in neither hive.yaml nor the spec applied before")
        return hive

    async def _hive_changes(self, name: str, changes: list[Change]) -> None:
        client = HiveClient(self._hive_spec(name), self.credentials.hive(name), self.fence)
        try:
            for change in changes:
                blocked = self._blocked_by(change)
                if blocked:
                    self._finish(change, blocked)
                    continue
                self.reporter.begin(change)
                try:
                    await self._one(client, change)
                except HiveCallError as error:
                    self._finish(change, str(error))
                except httpx.HTTPError as error:  # every call has a bound (clients/hive.py); reaching it fails this
                    self._finish(change, f"hive {name} did not answer in time ({type(error).__name__}: {error})")
                else:
                    self._finish(change, None)
        finally:
            await client.close()

    async def _one(self, client: HiveClient, change: Change) -> None:
        def progress(event: Progress) -> None:
            self.reporter.progress(change, event)

        if change.action in (Action.ADD_MODEL, Action.REPLACE_MODEL):
            model = self.spec.model(change.model or "")
            if model is None:
                raise HiveCallError(f"model {change.model} is not in hive.yaml")
            await client.add_model(model, progress)
        elif change.action is Action.REMOVE_MODEL:
            await client.remove_model(change.model or "")
        elif change.action is Action.START_WORKERS:
            group = WorkerGroup(change.model or "", change.backend or "auto", change.device or "auto")
            specs = [w for w in self.spec.workers if w.hive == change.hive and w.group == group]
            await client.start_workers(
                group.model,
                group.backend,
                group.device,
                change.replicas,
                progress,
                at_most=sum(w.replicas for w in specs) or None,
                shape=specs[0].shape if specs else WorkerShape(),
            )
        elif change.action is Action.STOP_WORKERS:
            await asyncio.gather(*(client.stop_worker(worker_id) for worker_id in change.worker_ids))
        else:
            raise HiveCallError(f"rbee cannot execute {change.action} here")
