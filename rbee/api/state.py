"""What is live: the body of a hive's `GET /v1/state`, and the observation the queen and keeper make of
every hive (which may be that it did not answer, and why).

These are read, never remembered: an observation describes one moment.
"""

from __future__ import annotations

from collections.abc import Iterator
from enum import StrEnum
from typing import NamedTuple

from pydantic import BaseModel, ConfigDict


class Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")


class WorkerState(StrEnum):
    LOADING = "loading"
    IDLE = "idle"
    BUSY = "busy"
    STOPPING = "stopping"
    STOPPED = "stopped"
    FAILED = "failed"
    PARKED = "parked"
    """Stopped after its idle timeout: holds no memory, still counts toward its replicas, and is started again
    when a request for its model finds no worker running."""

    @property
    def is_running(self) -> bool:
        """Counts towards a replica count: it holds the model or is about to."""
        return self in (WorkerState.LOADING, WorkerState.IDLE, WorkerState.BUSY)


class WorkerShape(NamedTuple):
    """How each worker of a group is sized; None leaves it to the backend: requests served at once from one
    model load, tokens of context per slot, and the engine's compute threads; and how long it may take to load
    (None: the hive's default, 10 minutes)."""

    slots: int | None = None
    context: int | None = None
    threads: int | None = None
    load_timeout: float | None = None


BACKEND_SHAPE = WorkerShape()
"""Every size left to the backend."""


class WorkerGroup(NamedTuple):
    """The identity of a group of workers: the model and the backend and device hive.yaml asks for (either may be
    `auto`). A worker belongs to the group that asked for it, whatever backend and device it got."""

    model: str
    backend: str = "auto"
    device: str = "auto"

    @property
    def label(self) -> str:
        """The group as people read it in a plan: `workers smollm2 [gguf, cuda:0]`."""
        pinned = [part for part in (self.backend, self.device) if part != "auto"]
        return f"workers {self.model}" + (f" [{', '.join(pinned)}]" if pinned else "")


class CatalogEntry(Frozen):
    name: str
    source: str
    format: str
    size_bytes: int = 0
    sha256: str | None = None
    managed: bool = True
    """False for a model someone put on the hive by hand: rbee never removes what it did not create."""
    kv_bytes_per_token: int | None = None
    """What one token of context costs in a gguf worker's KV cache (the file's header says); None when unknown."""
    architecture: str | None = None
    """What the model file says of itself (gguf headers; None when unknown): its architecture (`llama`), how its
    weights are quantized (`Q4_K_M`), how many weights it has, and the context it was trained for."""
    quantization: str | None = None
    parameters: int | None = None
    context_length: int | None = None
    pinned: bool = False
    """Fetched by the operator by hand (rbee models pull, the web UI's Pull): kept while hive.yaml names the model,
    even on a hive where no worker uses it (the planner removes other unused models)."""
    mmproj: str | None = None
    """The multimodal projector fetched with a gguf model (hive.yaml's `mmproj`): the model sees images."""


class WorkerInfo(Frozen):
    id: str
    model: str
    backend: str
    """The backend the worker runs (never `auto`)."""
    requested_backend: str = "auto"
    """The backend hive.yaml asked for, so `auto` workers match their spec."""
    device: str = "cpu"
    requested_device: str = "auto"
    state: WorkerState
    pid: int | None = None
    port: int | None = None
    reason: str | None = None
    managed: bool = True
    slots: int = 1
    """Requests the worker serves at once (from its backend)."""
    progress: float | None = None
    """While loading: the fraction loaded, as the engine reports it (None when it reports nothing)."""
    uptime: float | None = None
    """Seconds since the hive started its process (None from a hive too old to say)."""

    @property
    def group(self) -> WorkerGroup:
        return WorkerGroup(self.model, self.requested_backend, self.requested_device)


class Device(Frozen):
    """A place a worker can run: the CPU (with the host's RAM), one CUDA GPU, or Apple Metal."""

    id: str
    """`cpu`, `cuda:N` or `metal`: what hive.yaml's `device` names."""
    kind: str
    name: str = ""
    memory_total: int = 0
    memory_free: int = 0


class HostFacts(Frozen):
    """What a hive found on its machine at start: the devices, CPU features, and the engines it can import."""

    system: str = ""
    machine: str = ""
    cpu_count: int = 0
    cpu_features: tuple[str, ...] = ()
    devices: tuple[Device, ...] = ()
    engines: tuple[str, ...] = ()
    """The backends whose engine imports on this hive (gguf, torch, mlx, embed, ctransformers)."""

    def device(self, device_id: str) -> Device | None:
        return next((device for device in self.devices if device.id == device_id), None)

    def has(self, kind: str) -> bool:
        return any(device.kind == kind for device in self.devices)


class HiveState(Frozen):
    """What a hive daemon reports about itself."""

    name: str
    version: str
    backends: tuple[str, ...] = ()
    host: HostFacts | None = None
    catalog: tuple[CatalogEntry, ...] = ()
    workers: tuple[WorkerInfo, ...] = ()
    model_dirs: tuple[str, ...] | None = None
    """Where the hive may read file:// models from (its hive.json); None from a hive that does not say."""


class HiveStatus(StrEnum):
    RUNNING = "running"
    """The daemon answered `GET /v1/state`."""
    DOWN = "down"
    """The machine answered but the daemon did not (connection refused): it is stopped or not installed."""
    UNREACHABLE = "unreachable"
    """Nothing answered in time: the machine is off, cut off, or the address is wrong."""


class HiveObservation(Frozen):
    name: str
    status: HiveStatus
    reason: str = ""
    installed: bool | None = None
    """Whether rbee is installed there; None when that could not be seen."""
    state: HiveState | None = None
    managed: bool = True
    host: HostFacts | None = None
    """The machine's devices and engines: from the hive's state, or from SSH facts when the daemon is down."""
    seen_before: bool = False
    """rbee has seen this hive running before (the queen's registry says so). An unreachable hive that was
    never seen is planned from scratch, like any new resource; one seen before waits until it answers."""


class DownloadSize(Frozen):
    """What fetching a model source will download, as its registry says (the keeper asks before it plans)."""

    source: str
    bytes: int


class ProviderObservation(Frozen):
    """A provider as the keeper found it: whether its API answered (its /v1/models, with the key), the models it
    lists, and how the queen holds it now (its applied spec as JSON; None: not applied)."""

    name: str
    reachable: bool | None = None
    """None: not asked (a provider being removed)."""
    reason: str = ""
    models: tuple[str, ...] = ()
    applied: str | None = None


class ObservedState(Frozen):
    hives: tuple[HiveObservation, ...] = ()
    providers: tuple[ProviderObservation, ...] = ()
    downloads: tuple[DownloadSize, ...] = ()
    """The sizes of the sources a plan may fetch, where they could be told; planning reads them, never waits."""

    def download_size(self, source: str) -> int | None:
        return next((item.bytes for item in self.downloads if item.source == source), None)

    def hive(self, name: str) -> HiveObservation | None:
        return next((hive for hive in self.hives if hive.name == name), None)

    def workers(self) -> Iterator[tuple[str, WorkerInfo]]:
        for hive in self.hives:
            for worker in hive.state.workers if hive.state else ():
                yield hive.name, worker
