"""rbee's tasks: a generation that runs on the queen whether or not anyone is reading it, whose events a client
(re)attaches to while it runs (`GET /v2/tasks/{id}/events`). The store keeps the newest `MAX_TASKS`; a finished
task is evicted first, one still running never."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from rbee.api import wire
from rbee.queen.auth import Key
from rbee.queen.dispatch import Dispatcher, relay_after_opening
from rbee.queen.metrics import Exchange
from rbee.queen.scheduling import Ask

MAX_TASKS = 1000


@dataclass
class Task:
    id: str
    model: str
    key: str | None = None
    """The name of the API key that created it: only that key (and the admin's) may read or cancel it."""
    chunks: list[bytes] = field(default_factory=list)
    finished: bool = False
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    runner: asyncio.Task[None] | None = None

    def add(self, chunk: bytes, final: bool = False) -> None:
        self.chunks.append(chunk)
        self.finished = self.finished or final
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
            await waiter.wait()

    async def cancel(self) -> None:
        if self.runner is not None and not self.finished:
            self.runner.cancel()
            try:
                await self.runner
            except asyncio.CancelledError:
                if not self.runner.done():
                    raise  # the caller was cancelled itself


class TaskStore:
    def __init__(self, limit: int = MAX_TASKS) -> None:
        self.limit = limit
        self.tasks: dict[str, Task] = {}

    def get(self, task_id: str) -> Task | None:
        return self.tasks.get(task_id)

    def add(self, task: Task) -> None:
        self.tasks[task.id] = task
        while len(self.tasks) > self.limit:
            oldest = next(iter(self.tasks))
            if not self.tasks[oldest].finished:
                break
            del self.tasks[oldest]

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
    try:
        async for chunk in relay_after_opening(dispatch, ask, key, body, exchange, wire.error_event):
            task.add(chunk)
    except asyncio.CancelledError:
        task.add(wire.done_event(0, 0, wire.FinishReason.CANCELLED), final=True)
        raise
    task.add(b"", final=True)
