"""Which engine and which device a worker gets, and whether its model fits there: decided on the hive from its
host facts before any process starts, so an impossible worker is refused with a reason instead of crashing.

`backend: auto` follows DESIGN.md: embeddings -> embed; a GGUF file -> gguf (ctransformers where llama.cpp is
missing); an HF folder -> mlx on Metal, torch on CUDA or CPU; an MLX folder -> mlx.
"""

from __future__ import annotations

from rbee.api.state import Device, HostFacts
from rbee.plan.planner import human_size

IMPLEMENTED = ("gguf", "torch", "mlx", "embed", "ctransformers")
"""Backends whose worker code exists in this version of rbee."""
FORMATS = {
    "gguf": ("gguf", "ctransformers"),
    "safetensors": ("torch", "mlx", "embed"),
    "mlx": ("mlx",),
}
OVERHEAD = 1.2
"""Weights plus the context and runtime buffers, as a multiple of the model file size."""
BASE_BYTES = 64 << 20


class Refused(Exception):
    """A worker the hive will not start; the message says why and what to change."""


def choose_backend(model: str, kind: str, fmt: str, requested: str, facts: HostFacts) -> str:
    if kind == "embedding":
        if requested not in ("auto", "embed"):
            raise Refused(f"model {model} is an embedding model; only the embed backend serves it")
        if fmt == "gguf":
            raise Refused(f"model {model} is a GGUF file; the embed backend loads Hugging Face folders")
        return _usable(model, "embed", facts)
    if requested == "embed":
        raise Refused(f"model {model} is a text model; the embed backend serves embedding models")
    allowed = FORMATS.get(fmt, ())
    if requested != "auto":
        if requested not in allowed:
            raise Refused(
                f"the {requested} backend cannot load model {model} ({fmt}); use one of: {', '.join(allowed)}"
            )
        return _usable(model, requested, facts)
    if fmt == "gguf":
        order = ["gguf", "ctransformers"]
    elif fmt == "mlx":
        order = ["mlx"]
    else:
        order = ["mlx", "torch"] if facts.has("metal") else ["torch", "mlx"]
    for backend in order:
        if backend in IMPLEMENTED and backend in facts.engines:
            return backend
    return _usable(model, order[0], facts)


def _usable(model: str, backend: str, facts: HostFacts) -> str:
    if backend not in IMPLEMENTED:
        raise Refused(f"the {backend} backend is not available in rbee yet (model {model})")
    if facts.engines and backend not in facts.engines:
        raise Refused(
            f"the {backend} backend's engine is not installed on this hive (model {model}); "
            f"add {backend} to the hive's backends in hive.yaml and apply again"
        )
    return backend


def choose_device(requested: str, backend: str, facts: HostFacts) -> Device:
    """The device named in hive.yaml, or for `auto` the best one this backend can use on this host."""
    if requested != "auto":
        device = facts.device(requested)
        if device is None:
            have = ", ".join(device.id for device in facts.devices) or "none detected"
            raise Refused(f"device {requested} was asked for and this hive has no such device (it has: {have})")
        if (device.kind == "cuda" and backend == "mlx") or (device.kind == "metal" and backend in ("torch", "embed")):
            raise Refused(f"the {backend} backend cannot run on {device.id}")
        return device
    gpus = [device for device in facts.devices if device.kind == "cuda"] if backend != "mlx" else []
    if gpus:
        return max(gpus, key=lambda device: device.memory_free)
    metal = facts.device("metal")
    if metal is not None and backend in ("mlx", "gguf"):
        return metal
    cpu = facts.device("cpu")
    return cpu if cpu is not None else Device(id="cpu", kind="cpu")


def memory_needed(size_bytes: int) -> int:
    return int(size_bytes * OVERHEAD) + BASE_BYTES


def preflight(model: str, size_bytes: int, device: Device, reserved: int = 0) -> None:
    """Refuse a worker whose model does not fit in `device`'s free memory (less what workers being started
    right now will take), with both numbers."""
    need = memory_needed(size_bytes)
    free = device.memory_free - reserved
    if device.memory_free and need > free:
        raise Refused(
            f"model {model} needs about {human_size(need)} on {device.id} and only {human_size(max(free, 0))} "
            f"of {human_size(device.memory_total)} is free; stop other workers or choose another device"
        )
