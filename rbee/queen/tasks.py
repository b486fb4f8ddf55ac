"""rbee's tasks: a generation that runs on the queen whether or not anyone is reading it, whose events a client
(re)attaches to while it runs (`GET /v2/tasks/{id}/events`).

The store is bounded in count and in bytes: finished tasks leave oldest first (whatever still runs before them),
and any finished task leaves after `KEEP_FINISHED` seconds; a task still running is never evicted. Every task
ends: if nothing else ended it, it ends with an error event.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from rbee.api import wire
from rbee.queen.auth import Key
from rbee.queen.dispatch import Dispatcher
from rbee.queen.metrics import Exchange
from rbee.queen.scheduling import Ask
from rbee.queen.streaming import relay_after_opening

log = logging.getLogger("rbee.queen")
MAX_TASKS = 1000
MAX_BYTES = 64 << 20
KEEP_FINISHED = 600.0
"""Seconds a finished task's events stay to be read again."""


@dataclass
class Task:
    id: str
    model: str
    key: str | None = None
    """The name of the API key that created it: only that key (and the admin's) may read or cancel it."""
    chunks: list[bytes] = field(default_factory=list)
    size: int = 0
    finished: bool = False
    finished_at: float = 0.0
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    runner: asyncio.Task[None] | None = None

    def add(self, chunk: bytes, final: bool = False) -> None:
        self.chunks.append(chunk)
        self.size += len(chunk)
        if final and not self.finished:
            self.finished, self.finished_at = True, time.monotonic()
        self.changed.set()
        self.changed = asyncio.Event()

    async def replay(self) -> AsyncIterator[bytes]:
        """Every event so far, then each new one, until the task finishes."""
        sent = 0
        while True:
            waiter = self.changed
            while sent < len(self.chunks):
                yield self.chunks[sent]
                sent += 1
            if self.finished:
                return
            try:
                await asyncio.wait_for(waiter.wait(), KEEP_ALIVE)
            except TimeoutError:
                yield b": keep-alive\n\n"  # a reader can bound its wait: silence means the queen is gone

    async def cancel(self) -> None:
        if self.runner is not None and not self.finished:
            self.runner.cancel()
            try:
                await self.runner
            except asyncio.CancelledError:
                if not self.runner.done():
                    raise  # the caller was cancelled itself


KEEP_ALIVE = 15.0
"""A task's stream says something at least this often, so a reader can tell a slow answer from a dead queen."""


class TaskStore:
    def __init__(self, limit: int = MAX_TASKS, max_bytes: int = MAX_BYTES, keep: float = KEEP_FINISHED) -> None:
        self.limit, self.max_bytes, self.keep = limit, max_bytes, keep
        self.tasks: dict[str, Task] = {}

    def get(self, task_id: str) -> Task | None:
        return self.tasks.get(task_id)

    def add(self, task: Task) -> None:
        self.evict()
        self.tasks[task.id] = task

    def evict(self) -> None:
        """Finished tasks past their time, then the oldest finished ones while the store is over a bound."""
        now = time.monotonic()
        for task_id in [t.id for t in self.tasks.values() if t.finished and now - t.finished_at > self.keep]:
            del self.tasks[task_id]
        size = sum(task.size for task in self.tasks.values())
        finished = [task for task in self.tasks.values() if task.finished]  # oldest first: insertion order
        while finished and (len(self.tasks) >= self.limit or size > self.max_bytes):
            gone = finished.pop(0)
            size -= gone.size
            del self.tasks[gone.id]

    def start(self, dispatch: Dispatcher, task: Task, ask: Ask, key: Key | None, body: wire.ExecuteRequest) -> None:
        task.runner = asyncio.get_running_loop().create_task(run(dispatch, task, ask, key, body))

    def cancel_all(self) -> None:
        for task in self.tasks.values():
            if task.runner is not None and not task.runner.done():
                task.runner.cancel()


async def run(dispatch: Dispatcher, task: Task, ask: Ask, key: Key | None, body: wire.ExecuteRequest) -> None:
    """Generate into `task`: cold-start comments while it waits for a worker, then the worker's events; a
    refusal or a worker's failure is the task's error event, and cancelling it ends it as cancelled."""
    exchange = Exchange(task.id, task.model, ask.key)
    told: str | None = None

    async def deliver(chunk: bytes) -> None:
        nonlocal told
        if exchange.worker != told and exchange.hive is not None and exchange.worker is not None:
            task.add(wire.route_comment(exchange.hive, exchange.worker))
            told = exchange.worker
        task.add(chunk)

    try:
        await relay_after_opening(dispatch, ask, key, body, exchange, wire.error_event, deliver)
        task.add(b"", final=True)
    except asyncio.CancelledError:
        task.add(wire.done_event(0, 0, wire.FinishReason.CANCELLED), final=True)
        raise
    except Exception as error:  # a bug must not leave the task's readers waiting forever
        log.exception("task %s failed", task.id)
        task.add(wire.error_event(f"the task failed: {error}", "task_failed"), final=True)
    finally:
        if not task.finished:
            task.add(wire.error_event("the task ended without finishing", "task_failed"), final=True)
