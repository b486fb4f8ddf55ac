"""A worker's state: its options, its one model load, which request holds it, and the wake-ups its HTTP side
waits on. Shared by the app, the stream and the loading thread."""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass, field

import uvicorn

from rbee.api.state import WorkerState
from rbee.worker import backends

ABANDONED_AFTER = 5.0
"""Seconds a request may hold the worker busy without its stream starting (its client left first)."""


@dataclass
class WorkerOptions:
    worker_id: str
    model: str
    model_path: str
    backend: str
    device: str
    host: str
    port: int
    hive_url: str | None
    token: str | None
    parent_pid: int | None = None
    threads: int | None = None
    tls: tuple[str, str] | None = None
    """Certificate and key files: the worker then serves only TLS (its hive's certificate, same machine)."""
    ca_file: str | None = None


@dataclass
class Runtime:
    options: WorkerOptions
    engine: backends.Backend | backends.Embedder
    state: WorkerState = WorkerState.LOADING
    progress: float = 0.0
    error: str | None = None
    request_id: str | None = None
    cancel: threading.Event = field(default_factory=threading.Event)
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    loop: asyncio.AbstractEventLoop | None = None
    server: uvicorn.Server | None = None
    streaming: bool = False
    claimed: float = 0.0

    def set_state(self, state: WorkerState) -> None:
        self.state = state
        self.notify()

    def notify(self) -> None:
        if self.loop is not None:
            self.loop.call_soon_threadsafe(self._wake)

    def _wake(self) -> None:
        self.changed.set()
        self.changed = asyncio.Event()


def release(runtime: Runtime) -> None:
    runtime.streaming = False
    if runtime.state is WorkerState.BUSY:
        runtime.request_id = None
        runtime.set_state(WorkerState.IDLE)


async def release_abandoned(runtime: Runtime) -> None:
    """A request whose client left before its stream began would hold the worker busy forever: free it."""
    while True:
        await asyncio.sleep(1.0)
        stuck = time.monotonic() - runtime.claimed > ABANDONED_AFTER
        if runtime.state is WorkerState.BUSY and not runtime.streaming and stuck:
            release(runtime)
