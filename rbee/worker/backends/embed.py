"""Sentence embeddings through sentence-transformers (CPU or CUDA): a request is a batch of texts, the answer
is JSON vectors, not a stream."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any


class SentenceModel:
    """What the sentence-transformers engines share: a model folder, a device, torch's threads, and a lock that
    lets one batch run at a time."""

    def __init__(self, model_path: str, *, device: str = "cpu", threads: int | None = None) -> None:
        self.model_path = model_path
        self.device = "cpu" if device == "auto" else device
        self.threads = threads or max(1, os.cpu_count() or 1)
        self._model: Any = None
        self._lock = threading.Lock()

    def unload(self) -> None:
        self._model = None


class EmbedBackend(SentenceModel):
    name = "embed"
    kind = "embedding"

    def __init__(self, model_path: str, *, device: str = "cpu", threads: int | None = None) -> None:
        super().__init__(model_path, device=device, threads=threads)
        self._tokens = 0

    def load(self, progress: Callable[[float], None]) -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a model folder on disk needs no Hub
        from sentence_transformers import SentenceTransformer

        # sentence-transformers 6 imports no custom module of a local folder without trust_remote_code (their issue
        # #3801); both gates are said here explicitly, and weights load only from safetensors.
        model = SentenceTransformer(
            self.model_path, device=self.device, trust_remote_code=False, model_kwargs={"use_safetensors": True}
        )
        # The token count comes from the batches the model itself encodes: tokenizing the texts a second time
        # to count them cost 2% of an embedding request.
        model.register_forward_pre_hook(self._count_tokens)
        self._model = model
        progress(1.0)

    def _count_tokens(self, _module: Any, args: tuple[Any, ...]) -> None:
        features = args[0] if args else None
        if isinstance(features, Mapping) and "attention_mask" in features:
            self._tokens += int(features["attention_mask"].sum())

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
            self._tokens = 0
            vectors = model.encode(list(texts), convert_to_numpy=True, show_progress_bar=False)
            return vectors, self._tokens


ENGINE = EmbedBackend
"""What `backends.create` builds for this backend."""
