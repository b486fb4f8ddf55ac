"""What a model's own files say about it, read without running anything: a gguf's header, a folder's config.json.
The catalog entries a hive reports carry it (what a worker costs per token of KV cache, so a plan can show each
start's memory against the free memory; the architecture, quantization, weights and trained context that `rbee
models ls` and the web UI show), and the preflight sizes a worker's KV cache with it."""

from __future__ import annotations

from pathlib import Path

from rbee.api.state import CatalogEntry
from rbee.hive import gguf, hf_config
from rbee.hive.catalog import ModelRecord
from rbee.spec import backends
from rbee.spec.source import ModelFormat


def entry(record: ModelRecord) -> CatalogEntry:
    """The catalog entry with what the model's files say."""
    plain = record.entry()
    if record.format == str(ModelFormat.SAFETENSORS):
        folder = hf_config.facts(Path(record.path))
        if folder is None:
            return plain
        facts = {
            "kv_bytes_per_token": folder.kv_bytes_per_token,
            "architecture": folder.architecture,
            "context_length": folder.context_length,
        }
        return plain.model_copy(update=facts)
    found = gguf.header(Path(record.path)) if record.format == str(ModelFormat.GGUF) else None
    if found is None:
        return plain
    facts = {
        "kv_bytes_per_token": found.kv_bytes_per_token(),
        "architecture": found.architecture,
        "quantization": found.quantization,
        "parameters": found.parameters or None,
        "context_length": found.context_length,
    }
    return plain.model_copy(update=facts)


def kv_facts(path: Path, backend: str) -> tuple[int | None, int | None]:
    """What one token of context costs in a worker's KV cache, and the context the model was trained for (a gguf
    worker's context does not depend on it): None where the files do not tell."""
    if backend == str(backends.Backend.GGUF):
        return gguf.kv_bytes_per_token(path), None
    if backend == str(backends.Backend.TORCH):
        found = hf_config.facts(path)
        return (found.kv_bytes_per_token, found.context_length) if found is not None else (None, None)
    return None, None
