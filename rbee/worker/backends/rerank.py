"""Relevance scores through sentence-transformers' CrossEncoder (CPU or CUDA): a query and documents in, one
score per document out (the rerank shape llama.cpp, vLLM and LocalAI serve), not a stream."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence

from rbee.worker.backends.embed import SentenceModel


class RerankBackend(SentenceModel):
    name = "rerank"
    kind = "rerank"

    def load(self, progress: Callable[[float], None]) -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a model folder on disk needs no Hub
        from sentence_transformers import CrossEncoder

        # As for embeddings: a folder's own code never runs, and weights load only from safetensors.
        model = CrossEncoder(
            self.model_path, device=self.device, trust_remote_code=False, model_kwargs={"use_safetensors": True}
        )
        self._model = model
        progress(1.0)

    def _count(self, query: str, documents: Sequence[str]) -> int:
        """The tokens of every (query, document) pair as the model reads them (cut to its length). Counted by
        the tokenizer: sentence-transformers 6 hands its module no batch a hook can see."""
        tokenizer = self._model.tokenizer
        pairs = tokenizer([query] * len(documents), list(documents), truncation=True)
        return sum(len(ids) for ids in pairs["input_ids"])

    def rerank(self, query: str, documents: Sequence[str]) -> tuple[list[float], int]:
        """Each document's relevance to `query` (the model's score, higher is more relevant), and the tokens read."""
        import torch

        model = self._model
        if model is None:
            raise RuntimeError("the model is not loaded")
        with self._lock:
            # torch's intra-op pool is per thread; without this the calling thread ran at half speed (FACTS.md).
            torch.set_num_threads(self.threads)
            scores = model.predict(
                [(query, document) for document in documents], convert_to_numpy=True, show_progress_bar=False
            )
            return [float(score) for score in scores.reshape(len(documents), -1)[:, -1]], self._count(query, documents)


ENGINE = RerankBackend
"""What `backends.create` builds for this backend."""
