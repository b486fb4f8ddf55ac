"""Sentence embeddings through sentence-transformers (CPU or CUDA): a request is a batch of texts, the answer
is JSON vectors, not a stream."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Sequence
from typing import Any


class EmbedBackend:
    name = "embed"
    kind = "embedding"

    def __init__(self, model_path: str, *, device: str = "cpu", threads: int | None = None) -> None:
        self.model_path = model_path
        self.device = "cpu" if device == "auto" else device
        self.threads = threads or max(1, os.cpu_count() or 1)
        self._model: Any = None
        self._lock = threading.Lock()

    def load(self, progress: Callable[[float], None]) -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a model folder on disk needs no Hub
        from sentence_transformers import SentenceTransformer

        self._model = SentenceTransformer(self.model_path, device=self.device.replace("cuda:", "cuda:"))
        progress(1.0)

    @property
    def dimensions(self) -> int:
        return int(self._model.get_sentence_embedding_dimension()) if self._model is not None else 0

    def embed(self, texts: Sequence[str]) -> tuple[Any, int]:
        """Vectors for `texts` (a float32 numpy array, one row per text), and how many tokens they were."""
        import torch

        model = self._model
        if model is None:
            raise RuntimeError("the model is not loaded")
        with self._lock:
            # torch's intra-op pool is per thread; without this the calling thread ran at half speed (FACTS.md).
            torch.set_num_threads(self.threads)
            encoded = model.tokenizer(list(texts), truncation=True, max_length=model.max_seq_length)
            tokens = sum(len(ids) for ids in encoded["input_ids"])
            vectors = model.encode(list(texts), convert_to_numpy=True, show_progress_bar=False)
        return vectors, tokens

    def unload(self) -> None:
        self._model = None
