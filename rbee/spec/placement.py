"""Which engine and which device a worker gets, and whether its model fits there: decided on the hive from its
host facts before any process starts, so an impossible worker is refused with a reason instead of crashing, and
read by the planner from the facts the hive reports, so `rbee plan` shows what each start will need. No I/O here.

`backend: auto` follows DESIGN.md: embeddings -> embed; rerank -> rerank; a GGUF file -> gguf (ctransformers
where llama.cpp is missing); an HF folder -> mlx on Metal, torch on CUDA or CPU; an MLX folder -> mlx.
"""

from __future__ import annotations

from dataclasses import dataclass

from rbee.api.state import Device, HostFacts, WorkerShape
from rbee.api.units import human_size
from rbee.spec import backends

OVERHEAD = 1.2
"""Weights plus the context and runtime buffers, as a multiple of the model file size."""
BASE_BYTES = 64 << 20


class Refused(Exception):
    """A worker the hive will not start; the message says why and what to change."""


def choose_backend(model: str, kind: str, fmt: str, requested: str, facts: HostFacts) -> str:
    """The backend for a worker of `model`: the one hive.yaml names, if it can serve the model here, or for
    `auto` the first of spec/backends.py's order for this platform whose engine this hive has."""
    if requested != "auto":
        backend = _known(model, requested)
        if not backends.serves(backend, kind, fmt):
            raise Refused(_cannot_serve(model, kind, fmt, backend))
        return _usable(model, backend, facts)
    order = backends.auto_order(kind, fmt, facts.has("metal"))
    if not order:
        raise Refused(_cannot_serve(model, kind, fmt, None))
    for backend in order:
        if backend in facts.engines:
            return str(backend)
    return _usable(model, order[0], facts)


def _known(model: str, name: str) -> backends.Backend:
    try:
        return backends.Backend(name)
    except ValueError:
        raise Refused(f"the {name} backend is not available in rbee yet (model {model})") from None


def _cannot_serve(model: str, kind: str, fmt: str, backend: backends.Backend | None) -> str:
    if kind == "embedding" and backend not in (None, backends.Backend.EMBED):
        return f"model {model} is an embedding model; only the embed backend serves it"
    if kind == "embedding":
        return f"model {model} is a {fmt} file; the embed backend loads Hugging Face folders"
    if backend is backends.Backend.EMBED:
        return f"model {model} is a text model; the embed backend serves embedding models"
    if backend is not None and backends.TABLE[backend].kind != kind:
        return f"model {model} is a {kind} model; the {backend} backend serves {backends.TABLE[backend].kind} models"
    if kind == "rerank":
        return f"model {model} is a {fmt} file; the rerank backend loads Hugging Face folders of a cross-encoder"
    allowed = ", ".join(backends.loads(fmt))
    return f"the {backend} backend cannot load model {model} ({fmt}); use one of: {allowed}"


def _usable(model: str, backend: backends.Backend, facts: HostFacts) -> str:
    program = backends.TABLE[backend].engine if backends.TABLE[backend].program else None
    if facts.engines and backend not in facts.engines and program is not None:
        raise Refused(
            f"{program} is not installed on this hive (model {model}, the {backend} backend); install it "
            f"(Debian or Ubuntu: apt-get install {program}) and apply again"
        )
    if facts.engines and backend not in facts.engines:
        raise Refused(
            f"the {backend} backend's engine is not installed on this hive (model {model}); "
            f"add {backend} to the hive's backends in hive.yaml and apply again"
        )
    return str(backend)


def choose_device(requested: str, backend: str, facts: HostFacts) -> Device:
    """The device named in hive.yaml, or for `auto` the best one this backend can use on this host: the GPU with
    the most free memory, Metal, or the CPU, in the order the backend's table entry prefers them."""
    engine = backends.Backend(backend)
    if requested != "auto":
        device = facts.device(requested)
        if device is None:
            have = ", ".join(device.id for device in facts.devices) or "none detected"
            raise Refused(f"device {requested} was asked for and this hive has no such device (it has: {have})")
        if not backends.runs_on(engine, device.kind):
            raise Refused(f"the {backend} backend cannot run on {device.id}")
        return device
    for kind in backends.TABLE[engine].devices:
        found = [device for device in facts.devices if device.kind == kind]
        if found:
            return max(found, key=lambda device: device.memory_free)
    return Device(id="cpu", kind="cpu")


def memory_needed(size_bytes: int) -> int:
    return int(size_bytes * OVERHEAD) + BASE_BYTES


@dataclass(frozen=True, slots=True)
class KvCache:
    """A batching worker's KV cache: `slots` sequences of `context` tokens."""

    slots: int
    context: int
    bytes: int
    grows: bool = False
    """Allocated as it fills (torch), `bytes` being the most it grows to; else allocated whole at the start."""

    @property
    def size(self) -> str:
        return f"{'up to ' if self.grows else ''}{human_size(self.bytes)}"


def kv_cache(
    per_token: int | None, shape: WorkerShape, backend: str, device: str = "cpu", trained: int | None = None
) -> KvCache | None:
    """The KV cache a worker of `shape` (hive.yaml's sizes or the backend's defaults) on `device` holds, from the
    bytes one token takes (a gguf's header tells, in llama.cpp's f16 cache; a folder's config.json, in float32)
    and the context the model was trained for; None for a backend without one, or when that is unknown."""
    if per_token is None:
        return None
    if backend == str(backends.Backend.GGUF):
        slots, context = shape.slots or backends.GGUF_SLOTS, shape.context or backends.GGUF_CONTEXT
        return KvCache(slots, context, per_token * slots * context)
    if backend == str(backends.Backend.TORCH):
        slots = shape.slots or backends.TORCH_SLOTS
        context = shape.context or backends.TORCH_CONTEXT
        context = min(context, trained) if trained else context  # what the worker holds (torch.py's _context)
        # rows of up to twice the context (worker/backends/rows.py); float16 off the CPU
        held = per_token * slots * 2 * context // (1 if device == "cpu" else 2)
        return KvCache(slots, context, held, grows=True)
    return None


def fitted(
    size_bytes: int,
    per_token: int | None,
    shape: WorkerShape,
    backend: str,
    device: Device,
    trained: int | None = None,
    replicas: int = 1,
) -> WorkerShape:
    """`shape` with the slots hive.yaml leaves to the backend made what fits: the backend's default, or fewer (not
    below one) where `replicas` workers with that many slots' KV cache would not fit in `device`'s free memory.
    Slots hive.yaml names are kept as they are (the preflight refuses them if they do not fit)."""
    if shape.slots is not None or not device.memory_free:
        return shape
    usual = kv_cache(per_token, shape, backend, device.id, trained)
    if usual is None:
        return shape
    room = device.memory_free // max(replicas, 1) - memory_needed(size_bytes)
    per_slot = usual.bytes // usual.slots
    if per_slot <= 0 or room >= usual.bytes:
        return shape
    return shape._replace(slots=max(1, min(usual.slots, room // per_slot)))


def footprint(size_bytes: int, cache: KvCache | None) -> int:
    """What one worker takes on its device: the weights with runtime buffers, and its KV cache."""
    return memory_needed(size_bytes) + (cache.bytes if cache else 0)


def preflight(model: str, size_bytes: int, device: Device, reserved: int = 0, cache: KvCache | None = None) -> None:
    """Refuse a worker whose model (and KV cache) does not fit in `device`'s free memory (less what workers being
    started right now will take), with the numbers."""
    need = footprint(size_bytes, cache)
    free = device.memory_free - reserved
    if device.memory_free and need > free:
        parts = ""
        if cache is not None:
            parts = (
                f" ({human_size(memory_needed(size_bytes))} for its weights, {cache.size} for a KV cache "
                f"of {cache.slots} slots x {cache.context} tokens)"
            )
        fix = "lower workers[].slots or context, " if cache is not None else ""
        raise Refused(
            f"model {model} needs about {human_size(need)}{parts} on {device.id} and only "
            f"{human_size(max(free, 0))} of {human_size(device.memory_total)} is free; {fix}stop other workers or "
            "choose another device"
        )
