"""A worker's state: its options, its one model load, the requests that hold its slots, and the wake-ups its
HTTP side waits on. Shared by the app, the streams and the loading thread."""

from __future__ import annotations

import asyncio
import concurrent.futures
import itertools
import threading
import time
from dataclasses import dataclass, field

import uvicorn

from rbee.api.state import WorkerState
from rbee.worker import backends

ANONYMOUS = "anonymous"
"""The request id of a request that names none (the queen always names them)."""
ABANDONED_AFTER = 5.0
"""Seconds a request may hold a slot without its stream starting (its client left first)."""


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
    slots: int | None = None
    """Asked for by hive.yaml (`workers[].slots`); an engine that cannot batch serves one whatever it says."""
    context: int | None = None
    tls: tuple[str, str] | None = None
    """Certificate and key files: the worker then serves only TLS (its hive's certificate, same machine)."""
    ca_file: str | None = None
    mmproj_path: str | None = None
    """A gguf model's multimodal projector: the model then sees the images in chat messages."""
    listen_fd: int | None = None
    """The socket its hive bound to host:port and passed down: the port was the worker's from the moment the hive
    chose it, so nothing else on the machine can take it in the second before the worker listens."""


_THREADS: dict[int, concurrent.futures.ThreadPoolExecutor] = {}
"""The generation threads, by the slot count they serve (a worker process has one runtime; tests make many)."""


@dataclass
class Active:
    """One request holding a slot."""

    request_id: str
    cancel: threading.Event = field(default_factory=threading.Event)
    claimed: float = field(default_factory=time.monotonic)
    streaming: bool = False


@dataclass
class Runtime:
    options: WorkerOptions
    engine: backends.Engine
    state: WorkerState = WorkerState.LOADING
    progress: float = 0.0
    error: str | None = None
    active: dict[str, Active] = field(default_factory=dict)
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    loop: asyncio.AbstractEventLoop | None = None
    server: uvicorn.Server | None = None
    _anonymous: itertools.count[int] = field(default_factory=itertools.count)

    @property
    def slots(self) -> int:
        """Requests served at once: what the engine can generate side by side (1 for an engine with one context)."""
        return max(1, int(getattr(self.engine, "slots", 1)))

    @property
    def generation_threads(self) -> concurrent.futures.ThreadPoolExecutor:
        """One long-lived thread per slot, the same ones for every runtime in the process: engines keep
        per-thread state (torch's intra-op pool took ~30 ms to set up in each new thread; MLX streams belong to a
        thread), so a generation never runs in a fresh thread."""
        if self.slots not in _THREADS:
            _THREADS[self.slots] = concurrent.futures.ThreadPoolExecutor(self.slots, thread_name_prefix="generate")
        return _THREADS[self.slots]

    def refusal(self) -> str | None:
        """Why a new request cannot have a slot now, or None."""
        if self.state in (WorkerState.IDLE, WorkerState.BUSY) and len(self.active) < self.slots:
            return None
        if self.state is WorkerState.LOADING:
            return "the model is still loading"
        if self.state is WorkerState.BUSY:
            return f"the worker is busy (all {self.slots} slots)" if self.slots > 1 else "the worker is busy"
        return f"the worker is {self.state}"

    def claim(self, request_id: str) -> Active:
        if request_id == ANONYMOUS:  # a direct client that named none: each is its own request
            request_id = f"{ANONYMOUS}-{next(self._anonymous)}"
        request = Active(request_id)
        self.active[request_id] = request
        if self.state is WorkerState.IDLE:
            self.set_state(WorkerState.BUSY)
        return request

    def set_state(self, state: WorkerState) -> None:
        self.state = state
        self.notify()

    def notify(self) -> None:
        if self.loop is not None:
            self.loop.call_soon_threadsafe(self._wake)

    def _wake(self) -> None:
        self.changed.set()
        self.changed = asyncio.Event()


def release(runtime: Runtime, request: Active) -> None:
    request.streaming = False
    if runtime.active.get(request.request_id) is request:
        del runtime.active[request.request_id]
    if runtime.state is WorkerState.BUSY and not runtime.active:
        runtime.set_state(WorkerState.IDLE)


async def release_abandoned(runtime: Runtime) -> None:
    """A request whose client left before its stream began would hold its slot forever: free it."""
    while True:
        await asyncio.sleep(1.0)
        now = time.monotonic()
        for request in list(runtime.active.values()):
            if not request.streaming and now - request.claimed > ABANDONED_AFTER:
                release(runtime, request)
