"""mlx-lm for Apple Metal; on Linux the same code runs on `mlx[cpu]`, which is how CI tests it.

mlx-lm's `stream_generate` already detokenizes incrementally and yields one token at a time, so cancel is
checked between tokens; a seed goes to MLX's global generator before each request.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Generator, Sequence
from typing import Any

from rbee.api.wire import ChatMessage, FinishReason, SamplingOptions
from rbee.worker.backends import Generation, OneAtATime, hf


class MlxBackend(OneAtATime):
    name = "mlx"

    def __init__(self, model_path: str, *, device: str = "auto", threads: int | None = None) -> None:
        self.model_path = model_path
        self.device = "metal" if device in ("auto", "metal") else "cpu"
        self._model: Any = None
        self._tokenizer: Any = None
        self._lock = threading.Lock()

    def load(self, progress: Callable[[float], None]) -> None:
        import mlx.core as mx
        from mlx_lm import load

        if self.device == "metal" and not mx.metal.is_available():
            self.device = "cpu"
        mx.set_default_device(mx.gpu if self.device == "metal" else mx.cpu)
        progress(0.1)
        self._model, self._tokenizer = load(self.model_path, trust_remote_code=False)
        progress(1.0)

    def render_chat(self, messages: Sequence[ChatMessage]) -> tuple[str, tuple[str, ...]]:
        return hf.render_chat(self._tokenizer, messages)

    def _loaded(self) -> bool:
        return self._model is not None

    def _generate(
        self, prompt: str, options: SamplingOptions, cancel: threading.Event, result: Generation
    ) -> Generator[bytes, None, None]:
        import mlx.core as mx
        from mlx_lm import stream_generate
        from mlx_lm.sample_utils import make_logits_processors, make_sampler

        if options.seed is not None:
            mx.random.seed(options.seed)
        sampler = make_sampler(temp=options.temperature, top_p=options.top_p, top_k=options.top_k)
        processors = make_logits_processors(repetition_penalty=options.repeat_penalty)
        result.finish_reason = FinishReason.LENGTH
        for response in stream_generate(
            self._model,
            self._tokenizer,
            prompt,
            max_tokens=options.max_tokens,
            sampler=sampler,
            logits_processors=processors,
        ):
            if cancel.is_set():
                result.finish_reason = FinishReason.CANCELLED
                return
            result.prompt_tokens = response.prompt_tokens
            if response.finish_reason == "stop":
                result.finish_reason = FinishReason.STOP
            elif response.token is not None:
                result.completion_tokens = response.generation_tokens
            yield response.text.encode("utf-8")

    def unload(self) -> None:
        self._model = self._tokenizer = None


ENGINE = MlxBackend
"""What `backends.create` builds for this backend."""
