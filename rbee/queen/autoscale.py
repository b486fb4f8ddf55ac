"""Idle timeout and cold start: the queen parks workers that served nothing for their model's `idle_timeout`
(down to the group's `min_replicas`), and starts one again when a request finds none running (or all busy while
a parked one could help). The request waits for it within its own deadline.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any

import httpx

from rbee.api.credentials import FleetCredentials
from rbee.api.state import HiveStatus, WorkerState
from rbee.clients.hive import HiveCallError, HiveClient, Progress, Readiness
from rbee.queen.admission import Admission
from rbee.queen.events import EventLog
from rbee.queen.fleet import Fleet
from rbee.queen.leadership import Leadership
from rbee.queen.scheduling import Route
from rbee.spec.schema import HiveFile, HiveSpec, WorkerSpec

log = logging.getLogger("rbee.queen")
COLD_START_TIMEOUT = 600.0
LOADING_LOOK = 0.2


@dataclass
class Start:
    """A worker being started on demand for a model."""

    model: str
    hive: str
    started: float
    detail: str = "starting a worker"

    def comment(self) -> bytes:
        waited = time.monotonic() - self.started
        return f": rbee cold start: {self.model} on hive {self.hive}: {self.detail} ({waited:.0f} s)\n\n".encode()


class Autoscaler:
    def __init__(
        self,
        fleet: Fleet,
        admission: Admission,
        events: EventLog,
        credentials: FleetCredentials,
        leadership: Leadership | None = None,
    ) -> None:
        self.fleet = fleet
        self.leadership = leadership
        """Only the leading queen starts and parks workers; the others ask it to (store.ask_wake)."""
        self.admission = admission
        self.events = events
        self.credentials = credentials
        self.starting: dict[str, Start] = {}
        self.leaving: set[str] = set()
        """Workers (`hive/id`) this queen is parking, until an observation shows them parked."""
        self._tasks: set[asyncio.Task[None]] = set()

    # -- cold start ------------------------------------------------------------------------------------------

    def wake(self, model: str) -> bool:
        """Start a worker for `model` if one may be started; True when one is (or already was) starting, or is
        loading already (a replacement, a scale-up, a restarted hive): the request then waits for it."""
        if model in self.starting:
            return True
        spec = self.fleet.spec
        target = self._target(spec, model) if spec is not None else None
        if not self._leads():
            if target is None and self._loading(model) is None:
                return False
            self._spawn(asyncio.to_thread(self.fleet.store.ask_wake, model))  # the leader starts it
            return True
        if target is None:
            loading = self._loading(model)
            if loading is None:
                return False
            start = Start(model, loading, time.monotonic(), "a worker of it is loading")
            self.starting[model] = start
            self._spawn(self._await_loading(start))
            return True
        hive, group = target
        start = Start(model, hive.name, time.monotonic())
        self.starting[model] = start
        self._spawn(self._start(hive, group, start))
        return True

    def _leads(self) -> bool:
        return self.leadership is None or self.leadership.leading

    def _client(self, hive: HiveSpec) -> HiveClient:
        """A client for commands to `hive`, fenced with the lease generation this queen leads under."""
        return HiveClient(hive, self.credentials.hive(hive.name), self.leadership.fence if self.leadership else None)

    def _spawn(self, work: Coroutine[Any, Any, None], name: str | None = None) -> None:
        task = asyncio.get_running_loop().create_task(work, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _loading(self, model: str) -> str | None:
        """A running hive on which a worker of `model` is loading, if any."""
        observed = self.fleet.registry.observed
        for hive in observed.hives if observed is not None else ():
            workers = hive.state.workers if hive.state is not None and hive.status is HiveStatus.RUNNING else ()
            if any(w.model == model and w.state is WorkerState.LOADING for w in workers):
                return hive.name
        return None

    async def _await_loading(self, start: Start) -> None:
        """Hold the requests while the loading worker comes up; refuse them if it never does."""
        try:
            deadline = start.started + COLD_START_TIMEOUT
            while time.monotonic() < deadline and not self.admission.has_workers(start.model):
                if self._loading(start.model) is None:
                    break
                await asyncio.sleep(LOADING_LOOK)
            if not self.admission.has_workers(start.model):
                message = f"the loading worker of {start.model} on hive {start.hive} did not come up"
                self.admission.fail_waiting(start.model, 503, "replacement_failed", message)
        finally:
            self.starting.pop(start.model, None)

    def _target(self, spec: HiveFile, model: str) -> tuple[HiveSpec, WorkerSpec] | None:
        """The worker group to grow: on a running hive, below its replica count; parked workers first, then the
        group with the fewest running."""
        observed = self.fleet.registry.observed
        best: tuple[tuple[int, int], HiveSpec, WorkerSpec] | None = None
        for group in spec.workers:
            if group.model != model or group.replicas == 0:
                continue
            hive = spec.hive(group.hive)
            seen = observed.hive(group.hive) if observed is not None else None
            if hive is None or seen is None or seen.status is not HiveStatus.RUNNING or seen.state is None:
                continue
            mine = [worker for worker in seen.state.workers if worker.group == group.group]
            leaving = sum(1 for worker in mine if f"{hive.name}/{worker.id}" in self.leaving)
            running = sum(1 for worker in mine if worker.state.is_running) - leaving
            parked = sum(1 for worker in mine if worker.state is WorkerState.PARKED) + leaving
            if running >= group.replicas:
                continue
            rank = (0 if parked else 1, running)
            if best is None or rank < best[0]:
                best = (rank, hive, group)
        return (best[1], best[2]) if best else None

    async def _start(self, hive: HiveSpec, group: WorkerSpec, start: Start) -> None:
        client = self._client(hive)
        self.events.record(
            "cold-start", f"{hive.name}/workers {group.model}", "a request found no free worker; starting one"
        )

        def progress(event: Progress) -> None:
            if isinstance(event, Readiness):
                start.detail = f"loading ({event.ready}/{event.of} ready)"

        try:
            ids = await client.start_workers(
                group.model,
                group.backend,
                group.device,
                1,
                progress,
                COLD_START_TIMEOUT,
                group.replicas,
                group.shape,
            )
            await self.fleet.refresh()
            took = time.monotonic() - start.started
            if ids:
                self.events.record(
                    "cold-start", f"{hive.name}/workers {group.model}", f"{ids[0]} ready after {took:.1f} s"
                )
            elif self._loading(group.model) is not None:  # the reconcile pass started them first: wait for those
                start.detail = "a worker of it is loading"
                await self._await_loading(start)
        except (HiveCallError, httpx.HTTPError) as error:
            message = f"could not start a worker of {group.model} on hive {hive.name}: {error}"
            self.events.record("failed", f"{hive.name}/workers {group.model}", message)
            self.admission.fail_waiting(group.model, 503, "cold_start_failed", message)
        except Exception as error:  # an httpx error, a bug: the waiting requests must not hang on it
            log.exception("cold start of %s failed", group.model)
            self.admission.fail_waiting(group.model, 503, "cold_start_failed", f"cold start failed: {error}")
        finally:
            self.starting.pop(group.model, None)
            await client.close()

    # -- idle timeout ----------------------------------------------------------------------------------------

    def park_idle(self) -> None:
        """Park every worker idle past its group's idle timeout while its group runs above its floor."""
        spec = self.fleet.spec
        if spec is None or not self._leads():
            return
        now = time.monotonic()
        registry = self.fleet.registry
        running: dict[tuple[str, str], int] = {}
        for route in registry.routes.values():
            running[(route.hive, route.model)] = running.get((route.hive, route.model), 0) + 1
        for route in sorted(registry.routes.values(), key=lambda r: r.last_used):
            if route.in_flight or route.gone:
                continue
            group = next((w for w in spec.workers if w.hive == route.hive and w.model == route.model), None)
            model = spec.model(route.model)
            if group is None:
                continue
            idle_after = group.idle_after(model)
            if idle_after <= 0 or now - route.last_used < idle_after:
                continue
            if running[(route.hive, route.model)] <= group.floor(model):
                continue
            running[(route.hive, route.model)] -= 1
            self.leaving.add(route.key)
            registry.forget(route)  # out of rotation before anything else can pick it
            self.admission.sync(registry.routes.values())
            hive = spec.hive(route.hive)
            if hive is not None:
                task = asyncio.get_running_loop().create_task(
                    self._park(hive, route, idle_after), name=f"park {route.key}"
                )
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)

    async def _park(self, hive: HiveSpec, route: Route, idle_after: float) -> None:
        client = self._client(hive)
        reason = f"idle for {idle_after:g} s; started again on demand"
        try:
            await client.park_worker(route.worker_id, reason)
            self.events.record("idle", f"{hive.name}/workers {route.model}", f"parked {route.worker_id}: {reason}")
            await self.fleet.refresh()  # the registry sees it parked before it stops counting as leaving
        except (HiveCallError, httpx.HTTPError) as error:
            self.events.record(
                "failed", f"{hive.name}/workers {route.model}", f"parking {route.worker_id} failed: {error}"
            )
        finally:
            self.leaving.discard(route.key)
            await client.close()

    async def settle(self) -> None:
        """Wait for the parkings in flight, so an observation never sees a worker half parked."""
        parking = [task for task in self._tasks if task.get_name().startswith("park ")]
        if parking:
            await asyncio.wait(parking)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
