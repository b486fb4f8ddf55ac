"""What a Hugging Face model folder's config.json says about the model, for the catalog and the preflight: its
architecture, the context it was trained for, and what one token of context costs in a torch worker's KV cache
(read as JSON: nothing in the folder runs)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

FLOAT32 = 4
"""Bytes per value in a torch worker's cache on CPU (on CUDA it runs float16: half)."""


@dataclass(frozen=True, slots=True)
class FolderFacts:
    architecture: str | None
    context_length: int | None
    kv_bytes_per_token: int | None
    """Keys and values of every layer for one token, in float32; None when config.json does not say enough."""


def facts(folder: Path) -> FolderFacts | None:
    """The facts of the model folder at `folder`; None when it has no readable config.json."""
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(config, dict):
        return None
    text = config.get("text_config")  # multimodal models keep the language model's numbers apart
    numbers: dict[str, Any] = {**config, **text} if isinstance(text, dict) else config
    architecture = numbers.get("model_type")
    return FolderFacts(
        architecture if isinstance(architecture, str) else None,
        _positive(numbers.get("max_position_embeddings")),
        _kv_bytes_per_token(numbers),
    )


def _kv_bytes_per_token(numbers: dict[str, Any]) -> int | None:
    layers, heads = _positive(numbers.get("num_hidden_layers")), _positive(numbers.get("num_attention_heads"))
    hidden = _positive(numbers.get("hidden_size"))
    if layers is None or heads is None or hidden is None:
        return None
    kv_heads = _positive(numbers.get("num_key_value_heads")) or heads
    head_dim = _positive(numbers.get("head_dim")) or hidden // heads
    return layers * kv_heads * head_dim * 2 * FLOAT32


def _positive(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None
