"""The one table of backends: which formats and model kind each loads, which devices it runs on, the engine it
imports, and the pip extra of rbee that installs it; and the one rule for `backend: auto`.

hive.yaml's schema and checks, the placement of workers (spec/placement.py), the extras that apply installs on a
hive, the engine detection and the worker's engine factory all read this table, so they cannot disagree. No I/O here.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum

from pydantic import BaseModel, ConfigDict

from rbee.spec.source import ModelFormat


class Backend(StrEnum):
    GGUF = "gguf"
    TORCH = "torch"
    MLX = "mlx"
    EMBED = "embed"
    RERANK = "rerank"
    """Cross-encoders through sentence-transformers: a query and documents in, relevance scores out."""
    CTRANSFORMERS = "ctransformers"
    WHISPER = "whisper"
    """Transcription and translation by Whisper models (Hugging Face folders) on transformers."""
    DIFFUSERS = "diffusers"
    """Images from text by diffusion pipelines (Hugging Face diffusers folders: Stable Diffusion and kin)."""
    PIPER = "piper"
    """Speech from Piper voices (VITS models in ONNX, on onnxruntime): neural, many times faster than real time on
    a CPU."""
    ESPEAK = "espeak"
    """Speech from eSpeak NG, the program (Debian's espeak-ng): formant synthesis, no model file, every language."""
    SYNTHETIC = "synthetic"
    """A benchmark load (worker/backends/synthetic.py): no weights, tokens at a fixed rate; never chosen by auto."""


class ModelKind(StrEnum):
    TEXT = "text"
    EMBEDDING = "embedding"
    RERANK = "rerank"
    SPEECH = "speech"
    """Text in, audio out (OpenAI's /v1/audio/speech)."""
    TRANSCRIPTION = "transcription"
    """Audio in, text out (OpenAI's /v1/audio/transcriptions and /translations)."""
    IMAGE = "image"
    """Text in, pictures out (OpenAI's /v1/images/generations)."""


@dataclass(frozen=True, slots=True)
class Capability:
    backend: Backend
    formats: frozenset[ModelFormat]
    kind: ModelKind
    devices: tuple[str, ...]
    """The device kinds it runs on, in the order `device: auto` prefers them."""
    engine: str
    """The Python module whose presence means the engine is installed (with `program`: the program on PATH)."""
    extra: str
    """rbee's pip extra that installs the engine."""
    program: bool = False
    """The engine is a program the system installs, not a Python module."""


TABLE: dict[Backend, Capability] = {
    Backend.GGUF: Capability(
        Backend.GGUF, frozenset({ModelFormat.GGUF}), ModelKind.TEXT, ("cuda", "metal", "cpu"), "llama_cpp", "gguf"
    ),
    Backend.TORCH: Capability(
        Backend.TORCH, frozenset({ModelFormat.SAFETENSORS}), ModelKind.TEXT, ("cuda", "cpu"), "transformers", "torch"
    ),
    Backend.MLX: Capability(
        Backend.MLX,
        frozenset({ModelFormat.SAFETENSORS, ModelFormat.MLX}),
        ModelKind.TEXT,
        ("metal", "cpu"),  # the CPU through mlx[cpu] on Linux
        "mlx_lm",
        "mlx",
    ),
    Backend.EMBED: Capability(
        Backend.EMBED,
        frozenset({ModelFormat.SAFETENSORS}),
        ModelKind.EMBEDDING,
        ("cuda", "cpu"),
        "sentence_transformers",
        "embed",
    ),
    Backend.RERANK: Capability(
        Backend.RERANK,
        frozenset({ModelFormat.SAFETENSORS}),
        ModelKind.RERANK,
        ("cuda", "cpu"),
        "sentence_transformers",
        "embed",  # the same packages as embeddings
    ),
    Backend.CTRANSFORMERS: Capability(
        Backend.CTRANSFORMERS,
        frozenset({ModelFormat.GGUF}),
        ModelKind.TEXT,
        ("cpu",),  # rbee runs it without GPU layers
        "ctransformers",
        "ctransformers",
    ),
    Backend.WHISPER: Capability(
        Backend.WHISPER,
        frozenset({ModelFormat.SAFETENSORS}),
        ModelKind.TRANSCRIPTION,
        ("cuda", "cpu"),
        "transformers",
        "transcription",
    ),
    Backend.DIFFUSERS: Capability(
        Backend.DIFFUSERS,
        frozenset({ModelFormat.SAFETENSORS}),
        ModelKind.IMAGE,
        ("cuda", "metal", "cpu"),  # Metal through torch's MPS device
        "diffusers",
        "image",
    ),
    Backend.PIPER: Capability(
        Backend.PIPER,
        frozenset({ModelFormat.PIPER}),
        ModelKind.SPEECH,
        ("cpu",),  # onnxruntime's CPU provider: the piper extra installs no GPU build
        "piper",
        "piper",
    ),
    Backend.ESPEAK: Capability(
        Backend.ESPEAK,
        frozenset({ModelFormat.ESPEAK}),
        ModelKind.SPEECH,
        ("cpu",),
        "espeak-ng",
        "speech",  # lameenc, for mp3
        program=True,
    ),
    Backend.SYNTHETIC: Capability(
        Backend.SYNTHETIC,
        frozenset(ModelFormat),  # it reads none of them
        ModelKind.TEXT,
        ("cpu",),
        "rbee",
        "",  # nothing to install
    ),
}

_PREFERENCE = {
    True: (
        Backend.GGUF,
        Backend.MLX,
        Backend.TORCH,
        Backend.EMBED,
        Backend.RERANK,
        Backend.CTRANSFORMERS,
        Backend.WHISPER,
        Backend.DIFFUSERS,
        Backend.PIPER,
        Backend.ESPEAK,
    ),
    False: (
        Backend.GGUF,
        Backend.TORCH,
        Backend.MLX,
        Backend.EMBED,
        Backend.RERANK,
        Backend.CTRANSFORMERS,
        Backend.WHISPER,
        Backend.DIFFUSERS,
        Backend.PIPER,
        Backend.ESPEAK,
    ),
}
"""`backend: auto` in order, on a Metal host (True) and elsewhere: llama.cpp for GGUF files everywhere, MLX
before torch for Hugging Face folders on Metal, ctransformers only where llama.cpp is missing."""


GGUF_SLOTS = 4
"""The gguf worker's slots when hive.yaml names none: what llama.cpp's own server runs by default."""
GGUF_CONTEXT = 4096
"""Its tokens of context per slot when hive.yaml names none."""
BATCHES = frozenset({Backend.GGUF, Backend.TORCH, Backend.MLX})
"""The backends that serve several requests from one model load (continuous batching, `workers[].slots`); every
other serves one request at a time (`rbee status` says so)."""
TORCH_SLOTS = 4
"""The torch worker's slots when hive.yaml names none (as for gguf)."""
TORCH_CONTEXT = 4096
"""Its tokens of context per slot when hive.yaml names none, or the model's own where that is less: its cache
grows with what it holds, and a bound set before it starts is one the preflight can check (a model trained for
128k tokens would otherwise grow a cache of tens of GB for one long prompt)."""


def loads(fmt: str | ModelFormat) -> tuple[Backend, ...]:
    """The backends that can load a model of this format, in table order."""
    return tuple(backend for backend, capability in TABLE.items() if fmt in capability.formats)


def serves(backend: Backend, kind: str, fmt: str) -> bool:
    capability = TABLE[backend]
    return capability.kind == kind and fmt in capability.formats


def auto_order(kind: str, fmt: str, metal: bool) -> tuple[Backend, ...]:
    """The backends `auto` considers for a model, best first; the hive takes the first whose engine it has."""
    return tuple(backend for backend in _PREFERENCE[metal] if serves(backend, kind, fmt))


def runs_on(backend: Backend, device_kind: str) -> bool:
    return device_kind in TABLE[backend].devices


class Workload(BaseModel):
    """What one worker group asks of a hive: the model's kind and format, and the backend hive.yaml names."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: str
    format: str
    backend: str = "auto"


def extras(workloads: Iterable[Workload], pinned: Iterable[str] | None, metal: bool) -> tuple[str, ...]:
    """rbee's pip extras a hive needs: those of its pinned backends, or of the backends its workloads will get
    (by the same `auto` rule the hive applies when it starts them)."""
    if pinned is not None:
        wanted = {Backend(name) for name in pinned}
    else:
        wanted = set()
        for workload in workloads:
            if workload.backend != "auto":
                wanted.add(Backend(workload.backend))
            else:
                order = auto_order(workload.kind, workload.format, metal)
                if order:
                    wanted.add(order[0])
    return tuple(sorted(TABLE[backend].extra for backend in wanted if TABLE[backend].extra))
