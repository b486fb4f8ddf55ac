"""ctransformers: a no-compile fallback for llama-architecture GGUF where llama.cpp cannot be built.

Its own `tokenize()` allocates len(text)+1 ints and overflows on emoji and CJK (FACTS.md), so it never sees text:
the model's tokenizer (read from the GGUF by transformers) turns text into ids and ids back into text, and
ctransformers only turns ids into the next id. Cancel is checked between tokens; a seed goes with each request.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from rbee.api.wire import ChatMessage, FinishReason, SamplingOptions
from rbee.worker.backends import BackendError, Generation
from rbee.worker.text import TextAssembler

CONTEXT = 2048


class CtransformersBackend:
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
        self._tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
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
        tokenizer = self._tokenizer
        chat = [message.model_dump(exclude_none=True) for message in messages]
        if tokenizer is not None and getattr(tokenizer, "chat_template", None):
            try:
                return str(tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)), ()
            except Exception as error:  # jinja's own errors, for a template that rejects these messages
                raise BackendError(f"the model's chat template failed: {error}") from None
        text = "".join(f"{message.role}: {message.content or ''}\n" for message in messages)
        return text + "assistant:", ("\nuser:",)

    def generate(
        self, prompt: str, options: SamplingOptions, cancel: threading.Event, result: Generation
    ) -> Iterator[str]:
        if self._llm is None:
            raise BackendError("the model is not loaded")
        with self._lock:
            yield from self._generate(prompt, options, cancel, result)

    def _generate(
        self, prompt: str, options: SamplingOptions, cancel: threading.Event, result: Generation
    ) -> Iterator[str]:
        tokenizer, llm = self._tokenizer, self._llm
        bos = tokenizer.bos_token or ""
        ids: list[int] = tokenizer(prompt, add_special_tokens=not (bos and prompt.startswith(bos)))["input_ids"]
        result.prompt_tokens = len(ids)
        room = CONTEXT - len(ids)
        if room < 1:
            raise BackendError(f"the prompt is {len(ids)} tokens and the context holds {CONTEXT}; shorten the prompt")
        limit = min(options.max_tokens, room)
        stops = {tokenizer.eos_token_id, llm.eos_token_id} - {None}
        assembler = TextAssembler(options.stop)
        generated: list[int] = []
        prefix, read = 0, 0
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
            before = tokenizer.decode(generated[prefix:read], skip_special_tokens=True)
            after = tokenizer.decode(generated[prefix:], skip_special_tokens=True)
            if len(after) > len(before) and not after.endswith("\ufffd"):
                piece = assembler.feed(after[len(before) :].encode("utf-8"))
                prefix, read = read, len(generated)
                if piece:
                    yield piece
                if assembler.stopped:
                    result.finish_reason = FinishReason.STOP
                    return
            if len(generated) >= limit:
                break
        tail = assembler.flush()
        if tail:
            yield tail

    def unload(self) -> None:
        self._llm = self._tokenizer = None
