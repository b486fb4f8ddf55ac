"""The queen's event log: specs applied, what each reconcile pass changed, failures, idle parking, cold starts.
Stored in SQLite (the newest 100,000 events), read back as a list or followed as Server-Sent Events."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

from rbee.queen.store import Store

KEEP = 100_000
PRUNE_EVERY = 1000
KEEP_ALIVE = 15.0
"""Seconds of silence after which a follower gets an SSE comment, so proxies keep its connection."""


class EventLog:
    def __init__(self, store: Store) -> None:
        self.store = store
        self.added = asyncio.Event()
        self._logged = 0

    def record(self, kind: str, target: str, message: str) -> None:
        """One line of the log, and a wake-up for whoever follows it."""
        self.store.log(kind, target, message)
        self._logged += 1
        if self._logged % PRUNE_EVERY == 0:
            self.store.prune_events(KEEP)
        self.changed()

    def changed(self) -> None:
        """Wake the followers (also after the store logged an event itself, as a spec change does)."""
        self.added.set()
        self.added = asyncio.Event()

    def recent(self, limit: int, after: int | None = None) -> list[dict[str, Any]]:
        return self.store.events(limit, after)

    async def follow(self, limit: int, after: int | None) -> AsyncIterator[bytes]:
        """The last `limit` events (or those after `after`), then each new one as it comes."""
        backlog = self.store.events(limit, after)
        last = backlog[-1]["id"] if backlog else (after if after is not None else self._newest())
        for item in backlog:
            yield _sse(item)
        while True:
            waiter = self.added
            fresh = self.store.events(1000, last)
            for item in fresh:
                yield _sse(item)
                last = item["id"]
            if not fresh:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(waiter.wait(), KEEP_ALIVE)
                if not waiter.is_set():
                    yield b": keep-alive\n\n"

    def _newest(self) -> int:
        newest = self.store.events(1)
        return int(newest[-1]["id"]) if newest else 0


def _sse(item: dict[str, Any]) -> bytes:
    return f"id: {item['id']}\ndata: {json.dumps(item)}\n\n".encode()
