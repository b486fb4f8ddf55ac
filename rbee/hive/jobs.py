"""Provisioning jobs: a model's fetch belongs to the hive, not to the HTTP request that asked for it.

A job runs to its end whether or not anyone still listens, and holds the model's lock until then: a client that
goes away does not free the lock while the download thread goes on, and a second request for the same model
attaches to the running job (it sees the latest progress, then the same ending) instead of starting a second
download into the same staging dir.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from rbee.api import wire

KEEP_ALIVE = 15.0


class ProvisionJob:
    def __init__(self, body: wire.ModelRequest) -> None:
        self.body = body
        self.pinned = body.pinned
        """Some request for this fetch came from the operator by hand: the entry is pinned (CatalogEntry)."""
        self.latest: bytes | None = None
        """The newest progress frame (a listener that attaches late needs only that)."""
        self.final: bytes | None = None
        """The frame that ends the job: done, or an error."""
        self.task: asyncio.Task[None] | None = None
        self._changed = asyncio.Event()

    @property
    def finished(self) -> bool:
        return self.final is not None

    def progress(self, frame: bytes) -> None:
        self.latest = frame
        self._wake()

    def end(self, frame: bytes) -> None:
        if self.final is None:
            self.final = frame
            self._wake()

    def _wake(self) -> None:
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    async def follow(self) -> AsyncIterator[bytes]:
        """The job's frames for one listener: progress as it comes (keep-alives through quiet steps, so the
        listener's idle timeout does not fire while a big file is hashed), then the ending."""
        seen: bytes | None = None
        while True:
            if self.latest is not None and self.latest is not seen:
                seen = self.latest
                yield seen
            if self.final is not None:
                yield self.final
                return
            changed = self._changed
            try:
                await asyncio.wait_for(changed.wait(), KEEP_ALIVE)
            except TimeoutError:
                yield b": keep-alive\n\n"
