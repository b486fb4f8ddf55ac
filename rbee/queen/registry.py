"""Which workers serve which model right now: refreshed from the hives' observed state. A worker keeps one
`Route` object for as long as it is observed, so the admission counters on it survive refreshes.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from rbee.api.credentials import FleetCredentials
from rbee.api.state import HiveStatus, ObservedState, WorkerState
from rbee.queen.scheduling import Route
from rbee.spec.schema import HiveFile

ROUTABLE = (WorkerState.IDLE, WorkerState.BUSY)


@dataclass
class Registry:
    credentials: FleetCredentials | None = None
    routes: dict[str, Route] = field(default_factory=dict)
    observed: ObservedState | None = None
    observed_at: float = 0.0

    def update(self, spec: HiveFile, observed: ObservedState) -> None:
        self.observed, self.observed_at = observed, time.time()
        fresh: dict[str, Route] = {}
        for hive_observation in observed.hives:
            hive = spec.hive(hive_observation.name)
            state = hive_observation.state
            if hive is None or state is None or hive_observation.status is not HiveStatus.RUNNING:
                continue
            host = hive.api_url.rsplit(":", 1)[0]
            for worker in state.workers:
                if worker.state not in ROUTABLE or worker.port is None:
                    continue
                key = f"{hive.name}/{worker.id}"
                url = f"{host}:{worker.port}"
                known = self.routes.get(key)
                if known is None or known.url != url or known.model != worker.model:
                    known = Route(
                        worker.id,
                        hive.name,
                        worker.model,
                        url,
                        slots=max(1, worker.slots),
                        last_used=time.monotonic(),
                        credential=self._credential(hive.name, worker.id),
                    )
                fresh[key] = known
        self.routes = fresh

    def snapshot(self) -> list[tuple[str, str, str, str]]:
        return sorted((r.hive, r.worker_id, r.model, r.url) for r in self.routes.values())

    def restore(self, workers: list[tuple[str, str, str, str]]) -> None:
        """Routes remembered from before a restart, used until the hives are observed again."""
        for hive, worker_id, model, url in workers:
            self.routes[f"{hive}/{worker_id}"] = Route(
                worker_id, hive, model, url, last_used=time.monotonic(), credential=self._credential(hive, worker_id)
            )

    def _credential(self, hive: str, worker_id: str) -> str | None:
        return self.credentials.worker(hive, worker_id) if self.credentials else None

    def forget(self, route: Route) -> None:
        """A worker that broke mid-request is not offered again until the hives report it anew."""
        route.gone = True
        self.routes.pop(route.key, None)
