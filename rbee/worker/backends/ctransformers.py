"""ctransformers: a no-compile fallback for llama-architecture GGUF where llama.cpp cannot be built.

Its own `tokenize()` allocates len(text)+1 ints and overflows on emoji and CJK (FACTS.md), so it never sees text:
the model's tokenizer (read from the GGUF by transformers) turns text into ids and ids back into text, and
ctransformers only turns ids into the next id. Cancel is checked between tokens; a seed goes with each request.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Generator, Sequence
from pathlib import Path
from typing import Any

from rbee.api.wire import ChatMessage, FinishReason, SamplingOptions
from rbee.worker.backends import BackendError, Generation, OneAtATime, hf

CONTEXT = 2048


class CtransformersBackend(OneAtATime):
    name = "ctransformers"

    def __init__(self, model_path: str, *, device: str = "cpu", threads: int | None = None) -> None:
        self.model_path = model_path
        self.device = "cpu"
        self.threads = threads or max(1, os.cpu_count() or 1)
        self._llm: Any = None
        self._tokenizer: Any = None
        self._lock = threading.Lock()

    def load(self, progress: Callable[[float], None]) -> None:
        from ctransformers import AutoModelForCausalLM
        from transformers import AutoTokenizer

        path = Path(self.model_path)
        self._tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name, trust_remote_code=False)
        progress(0.3)
        flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
        lib = "avx2" if " avx2" in flags else "basic" if flags else None  # naming it skips ~1.2 s of CPU probing
        try:
            self._llm = AutoModelForCausalLM.from_pretrained(
                str(path), model_type="llama", lib=lib, context_length=CONTEXT, threads=self.threads
            )
        except RuntimeError as error:
            raise BackendError(
                f"ctransformers could not load {path.name} ({error}); it reads llama-architecture GGUF in f32, f16, "
                "q8_0 and K-quants: use the gguf backend for this model"
            ) from None
        progress(1.0)

    def render_chat(self, messages: Sequence[ChatMessage]) -> tuple[str, tuple[str, ...]]:
        return hf.render_chat(self._tokenizer, messages)

    def _loaded(self) -> bool:
        return self._llm is not None

    def _generate(
        self, prompt: str, options: SamplingOptions, cancel: threading.Event, result: Generation
    ) -> Generator[bytes, None, None]:
        tokenizer, llm = self._tokenizer, self._llm
        ids = hf.encode(tokenizer, prompt, CONTEXT)
        result.prompt_tokens = len(ids)
        limit = min(options.max_tokens, CONTEXT - len(ids))
        stops = {tokenizer.eos_token_id, llm.eos_token_id} - {None}
        text = hf.TokenText(tokenizer)
        generated: list[int] = []
        result.finish_reason = FinishReason.LENGTH
        for token in llm.generate(
            ids,
            top_k=options.top_k or 40,
            top_p=options.top_p,
            temperature=options.temperature,
            repetition_penalty=options.repeat_penalty,
            seed=options.seed if options.seed is not None else -1,
            threads=self.threads,
            reset=True,
        ):
            if cancel.is_set():
                result.finish_reason = FinishReason.CANCELLED
                return
            if token in stops:
                result.finish_reason = FinishReason.STOP
                break
            generated.append(int(token))
            result.completion_tokens = len(generated)
            yield text.add(int(token)).encode("utf-8")
            if len(generated) >= limit:
                break

    def check_prompt(self, prompt: str) -> None:
        """A prompt that cannot fit the context is the client's 400 before the stream begins."""
        if self._tokenizer is not None:
            hf.encode(self._tokenizer, prompt, CONTEXT)

    def count_tokens(self, prompt: str) -> int:
        return hf.count(self._tokenizer, prompt)

    def unload(self) -> None:
        self._llm = self._tokenizer = None


ENGINE = CtransformersBackend
"""What `backends.create` builds for this backend."""
