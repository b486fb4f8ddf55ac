"""Models being fetched into hives' catalogs right now, by the reconcile loop or by the operator (the web UI's
Pull): how far each got, for the progress bars of the fleet's pages. Each stays listed for KEPT seconds after it
ends, so a page sees how it ended; nothing here is persisted.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

from rbee.api import wire
from rbee.clients.hive import Progress

KEPT = 30.0


@dataclass
class Fetch:
    hive: str
    model: str
    by: str
    """`reconcile` or `operator`."""
    started: float = field(default_factory=time.time)
    stage: str = "resolve"
    bytes: int = 0
    total: int = 0
    file: str | None = None
    ended: float | None = None
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "hive": self.hive,
            "model": self.model,
            "by": self.by,
            "started": self.started,
            "stage": self.stage,
            "bytes": self.bytes,
            "total": self.total,
            "file": self.file,
            "state": "failed" if self.error else "done" if self.ended else "fetching",
            "error": self.error,
        }


class Fetches:
    def __init__(self) -> None:
        self._items: dict[tuple[str, str], Fetch] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    def running(self, hive: str, model: str) -> bool:
        found = self._items.get((hive, model))
        return found is not None and found.ended is None

    def begin(self, hive: str, model: str, by: str) -> Fetch:
        fetch = Fetch(hive, model, by)
        self._items[(hive, model)] = fetch
        return fetch

    @staticmethod
    def progress(fetch: Fetch, event: Progress) -> None:
        if isinstance(event, wire.DownloadProgress):
            fetch.stage, fetch.bytes, fetch.total, fetch.file = "download", event.bytes, event.total, event.file
        elif isinstance(event, wire.StageProgress):
            fetch.stage, fetch.file = event.stage, event.file or fetch.file

    @staticmethod
    def end(fetch: Fetch, error: str | None) -> None:
        fetch.ended, fetch.error = time.time(), error
        if error is None and fetch.total:
            fetch.bytes = fetch.total

    def keep(self, task: asyncio.Task[None]) -> None:
        """Hold a fetch the operator started until it ends (the loop keeps only weak references)."""
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def current(self) -> list[dict[str, Any]]:
        now = time.time()
        for key, fetch in list(self._items.items()):
            if fetch.ended is not None and now - fetch.ended > KEPT:
                del self._items[key]
        return [fetch.to_json() for fetch in self._items.values()]
