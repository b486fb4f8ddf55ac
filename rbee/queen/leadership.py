"""Which queen leads: with several queens on one PostgreSQL store, all serve requests, and exactly one runs the
reconcile loop and the autoscaler, the holder of the store's lease. It renews the lease every third of its
length; a queen that cannot renew in time stops leading before its lease can have expired, and when the holder
dies another takes the lease once it expires (store.hold_lease: one generation up), adopting the fleet as it is:
no worker is restarted, the new leader only observes and goes on.

Each command the leader sends a hive carries the lease's generation (hive/fencing.py), so a queen that led
before and does not know it yet is refused. A queen alone on its own SQLite store always leads, unfenced.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections.abc import Callable

from rbee.queen.database import StoreError
from rbee.queen.events import EventLog
from rbee.queen.store import Store

log = logging.getLogger("rbee.queen")
LOOK = 0.25
"""Seconds between looks at hive.yaml's lease length while waiting to renew."""


class Leadership:
    def __init__(self, store: Store, events: EventLog, listen: str | None = None) -> None:
        self.store = store
        self.events = events
        self.holder = f"{socket.gethostname()}:{listen or '-'}:{os.getpid()}:{os.urandom(3).hex()}"
        """This queen, as the lease names it."""
        self.shared = store.shared
        self.leading = not self.shared
        self.generation: int | None = None
        """The lease generation this queen leads under (None: alone on its store, nothing to fence)."""
        self.lease = 10.0
        self.renewed = 0.0
        self.on_lead: Callable[[], None] = lambda: None
        """Called when this queen starts leading (its reconcile loop then runs a pass at once)."""

    @property
    def fence(self) -> int | None:
        """What this queen's commands to hives carry: its lease generation, while it leads a shared store."""
        return self.generation if self.leading else None

    def describe(self) -> dict[str, object]:
        """Who leads, for `rbee status`."""
        if not self.shared:
            return {"shared": False, "leader": self.holder, "this_queen": True, "generation": None}
        held = None
        try:
            held = self.store.lease()
        except StoreError as error:
            return {"shared": True, "leader": None, "this_queen": False, "error": str(error)}
        holder, generation, left = held if held is not None else (None, None, 0.0)
        alive = left > 0
        return {
            "shared": True,
            "leader": holder if alive else None,
            "generation": generation,
            "this_queen": self.leading,
            "queen": self.holder,
        }

    async def run(self, lease: Callable[[], float]) -> None:
        """Hold (or wait for) the lease, for as long as the queen runs; `lease` gives its length (hive.yaml's)."""
        if not self.shared:
            return
        while True:
            self.lease = lease()
            try:
                generation = await asyncio.to_thread(self.store.hold_lease, self.holder, self.lease)
            except StoreError as error:
                log.warning("the lease could not be renewed: %s", error)
                generation = None if time.monotonic() - self.renewed > self.lease * 2 / 3 else self.generation
            if generation is not None:
                self.renewed = time.monotonic()
            self._became(generation)
            await self._pause(lease)

    async def _pause(self, lease: Callable[[], float]) -> None:
        """A third of the lease, or less when hive.yaml's lease becomes shorter meanwhile (a spec applied): the
        lease in force was taken for the old length, and another queen must not wait that out."""
        until = time.monotonic() + self.lease / 3
        while time.monotonic() < until:
            await asyncio.sleep(min(LOOK, max(0.0, until - time.monotonic())))
            if lease() < self.lease:
                return

    def _became(self, generation: int | None) -> None:
        if generation is not None and not self.leading:
            self.leading, self.generation = True, generation
            log.info("this queen leads (lease generation %d): it reconciles the fleet", generation)
            self.events.record("leader", "queen", f"{self.holder} leads, lease generation {generation}")
            self.on_lead()
        elif generation is None and self.leading:
            self.leading = False
            log.warning("this queen no longer leads: another holds the lease, or the store did not answer")
            self.events.record("leader", "queen", f"{self.holder} no longer leads")
        elif generation is not None:
            self.generation = generation

    def release(self) -> None:
        """At a clean stop: the lease goes at once, so the next queen need not wait it out."""
        if self.shared and self.leading:
            try:
                self.store.release_lease(self.holder)
            except StoreError as error:
                log.warning("the lease could not be released (it expires by itself): %s", error)
            self.leading = False
