"""llama.cpp through llama-cpp-python, streaming with the low-level token loop.

`create_completion(stream=True)` re-detokenizes the whole output at every step; `Llama.generate` with
per-token detokenization and incremental UTF-8 is an order of magnitude faster (FACTS.md).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Generator, Sequence
from typing import Any

from rbee.api.wire import ChatMessage, FinishReason, SamplingOptions
from rbee.worker.backends import BackendError, Generation, OneAtATime, PromptTooLong, hf

DEFAULT_CONTEXT = 4096


class GgufBackend(OneAtATime):
    name = "gguf"

    def __init__(self, model_path: str, *, device: str = "cpu", threads: int | None = None) -> None:
        self.model_path = model_path
        self.device = "cpu" if device == "auto" else device
        self.threads = threads or max(1, os.cpu_count() or 1)
        self._llama: Any = None
        self._chat: Any = None
        self._lock = threading.Lock()
        self._counted: tuple[str, list[int]] | None = None
        """The prompt check_prompt tokenized, and its tokens: the generation that follows takes them as they are."""

    def load(self, progress: Callable[[float], None]) -> None:
        import llama_cpp
        from llama_cpp import llama_chat_format

        # llama-cpp-python reports no loading progress (its callback is not exposed): the hive sees loading -> idle.
        gpu_layers = 0 if self.device == "cpu" else -1
        params: dict[str, Any] = {}
        if self.device.startswith("cuda:"):
            params["main_gpu"] = int(self.device.split(":", 1)[1])
        llama = llama_cpp.Llama(
            model_path=self.model_path,
            n_ctx=DEFAULT_CONTEXT,
            n_threads=self.threads,
            n_gpu_layers=gpu_layers,
            verbose=False,
            **params,
        )
        template = llama.metadata.get("tokenizer.chat_template")
        if template:
            eos, bos = llama.token_eos(), llama.token_bos()
            self._chat = llama_chat_format.Jinja2ChatFormatter(
                template=template,
                eos_token=llama._model.token_get_text(eos) if eos != -1 else "",
                bos_token=llama._model.token_get_text(bos) if bos != -1 else "",
                stop_token_ids=[eos],
            )
        self._llama = llama
        progress(1.0)

    def render_chat(self, messages: Sequence[ChatMessage]) -> tuple[str, tuple[str, ...]]:
        if self._chat is None:
            return hf.plain_chat(messages)
        rendered = self._chat(messages=[message.model_dump(exclude_none=True) for message in messages])
        stop = rendered.stop if isinstance(rendered.stop, list) else [rendered.stop] if rendered.stop else []
        return rendered.prompt, tuple(stop)

    def _loaded(self) -> bool:
        return self._llama is not None

    def _tokens(self, prompt: str) -> list[int]:
        return list(self._llama.tokenize(prompt.encode("utf-8"), add_bos=True, special=True))

    def check_prompt(self, prompt: str) -> None:
        """Count the prompt with the model's own tokenizer before a stream begins: one that cannot fit is the
        client's mistake (400), not a generation that fails after it has started (502)."""
        llama = self._llama
        if llama is None:
            return
        with self._lock:
            tokens = self._tokens(prompt)
            self._counted = (prompt, tokens)
        if len(tokens) >= llama.n_ctx():
            raise PromptTooLong(
                f"the prompt is {len(tokens)} tokens and the model's context holds {llama.n_ctx()}; shorten it"
            )

    def _generate(
        self, prompt: str, options: SamplingOptions, cancel: threading.Event, result: Generation
    ) -> Generator[bytes, None, None]:
        import llama_cpp

        llama = self._llama

        bos = llama.token_bos()
        counted, self._counted = self._counted, None
        tokens = counted[1] if counted is not None and counted[0] == prompt else self._tokens(prompt)
        if len(tokens) > 1 and tokens[0] == bos and tokens[1] == bos:
            tokens = tokens[1:]  # the chat template wrote its own BOS
        result.prompt_tokens = len(tokens)
        room = llama.n_ctx() - len(tokens)
        if room < 1:
            raise BackendError(
                f"the prompt is {len(tokens)} tokens and the context holds {llama.n_ctx()}; shorten the prompt"
            )
        limit = min(options.max_tokens, room)
        if options.seed is not None:
            # Reusing the cached prompt prefix evaluates fewer tokens in a different batch shape, which shifts
            # logits in the last bits; a seeded request is evaluated from scratch so it repeats exactly.
            llama.set_seed(options.seed)
            llama.reset()
        eos, vocab = llama.token_eos(), llama._model.vocab
        result.finish_reason = FinishReason.LENGTH
        generated: list[int] = []
        for token in llama.generate(
            tokens,
            top_k=options.top_k,
            top_p=options.top_p,
            temp=options.temperature,
            repeat_penalty=options.repeat_penalty,
            reset=True,
        ):
            if cancel.is_set():
                result.finish_reason = FinishReason.CANCELLED
                return
            if token == eos or llama_cpp.llama_vocab_is_eog(vocab, token):
                result.finish_reason = FinishReason.STOP
                break
            generated.append(token)
            result.completion_tokens = len(generated)
            yield llama.detokenize([token])
            if len(generated) >= limit:
                break

    def unload(self) -> None:
        llama, self._llama = self._llama, None
        if llama is not None:
            llama.close()


ENGINE = GgufBackend
"""What `backends.create` builds for this backend."""
