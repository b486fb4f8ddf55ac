"""Which workers serve which model right now, and which of them is free: refreshed from the hives' state, with
the queen's own count of requests in flight per worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field

from rbee.api.state import HiveStatus, ObservedState, WorkerState
from rbee.spec.schema import HiveFile


@dataclass
class Route:
    worker_id: str
    hive: str
    model: str
    url: str
    in_flight: int = 0
    slots: int = 1
    last_used: float = 0.0


class NoWorker(Exception):
    """No worker can take the request; `retry_after` says when trying again may help."""

    def __init__(self, message: str, retry_after: int | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


@dataclass
class Registry:
    routes: dict[str, Route] = field(default_factory=dict)
    hive_status: dict[str, str] = field(default_factory=dict)
    spec: HiveFile | None = None
    observed: ObservedState | None = None
    observed_at: float = 0.0
    _freed: asyncio.Condition = field(default_factory=asyncio.Condition)

    def update(self, spec: HiveFile, observed: ObservedState) -> None:
        self.spec, self.observed, self.observed_at = spec, observed, time.time()
        fresh: dict[str, Route] = {}
        for hive_observation in observed.hives:
            self.hive_status[hive_observation.name] = str(hive_observation.status)
            hive = spec.hive(hive_observation.name)
            state = hive_observation.state
            if hive is None or state is None or hive_observation.status is not HiveStatus.RUNNING:
                continue
            host = hive.api_url.rsplit(":", 1)[0]
            for worker in state.workers:
                if worker.state not in (WorkerState.IDLE, WorkerState.BUSY) or worker.port is None:
                    continue
                key = f"{hive.name}/{worker.id}"
                route = self.routes.get(key) or Route(worker.id, hive.name, worker.model, f"{host}:{worker.port}")
                fresh[key] = route
        self.routes = fresh

    def snapshot(self) -> list[tuple[str, str, str, str]]:
        return sorted((r.hive, r.worker_id, r.model, r.url) for r in self.routes.values())

    def restore(self, workers: list[tuple[str, str, str, str]]) -> None:
        """Routes remembered from before a restart, used until the hives are observed again."""
        for hive, worker_id, model, url in workers:
            self.routes[f"{hive}/{worker_id}"] = Route(worker_id, hive, model, url)

    def models(self) -> list[str]:
        if self.spec is None:
            return []
        served = {worker.model for worker in self.spec.workers if worker.replicas > 0}
        return [model.name for model in self.spec.models if model.name in served]

    def knows(self, model: str) -> bool:
        return self.spec is not None and self.spec.model(model) is not None

    async def acquire(self, model: str, wait: float) -> Route:
        """The least-loaded free worker of `model`, waiting up to `wait` seconds for one to free up."""
        deadline = time.monotonic() + wait
        async with self._freed:
            while True:
                candidates = [route for route in self.routes.values() if route.model == model]
                free = [route for route in candidates if route.in_flight < route.slots]
                if free:
                    route = min(free, key=lambda r: (r.in_flight, r.last_used))
                    route.in_flight += 1
                    route.last_used = time.monotonic()
                    return route
                left = deadline - time.monotonic()
                if left <= 0:
                    if not candidates:
                        raise NoWorker(f"no worker of model {model} is ready; check `rbee status`", retry_after=5)
                    raise NoWorker(f"all {len(candidates)} workers of model {model} are busy", retry_after=1)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._freed.wait(), timeout=min(left, 0.5))

    async def release(self, route: Route) -> None:
        async with self._freed:
            route.in_flight = max(0, route.in_flight - 1)
            self._freed.notify_all()

    def forget(self, route: Route) -> None:
        """A worker that broke mid-request is not offered again until the hives report it anew."""
        self.routes.pop(f"{route.hive}/{route.worker_id}", None)
