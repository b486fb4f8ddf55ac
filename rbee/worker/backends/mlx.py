"""mlx-lm for Apple Metal; on Linux the same code runs on `mlx[cpu]`, which is how CI tests it.

mlx-lm's `stream_generate` already detokenizes incrementally and yields one token at a time, so cancel is
checked between tokens; a seed goes to MLX's global generator before each request.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Generator, Sequence
from typing import Any

from rbee.api.calls import Constraint
from rbee.api.wire import ChatMessage, FinishReason, SamplingOptions
from rbee.worker.backends import BackendError, Generation, OneAtATime, hf, masks, probabilities


class MlxBackend(OneAtATime):
    name = "mlx"
    sampling = frozenset({"presence_penalty", "frequency_penalty", "logit_bias", "logprobs"})

    def __init__(self, model_path: str, *, device: str = "auto", threads: int | None = None) -> None:
        self.model_path = model_path
        self.device = "metal" if device in ("auto", "metal") else "cpu"
        self._model: Any = None
        self._tokenizer: Any = None
        self._lock = threading.Lock()
        self._masks: masks.Masks | None = None

    def load(self, progress: Callable[[float], None]) -> None:
        import mlx.core as mx
        from mlx_lm import load

        if self.device == "metal" and not mx.metal.is_available():
            self.device = "cpu"
        mx.set_default_device(mx.gpu if self.device == "metal" else mx.cpu)
        progress(0.1)
        self._model, self._tokenizer = load(self.model_path, trust_remote_code=False)
        size = self.vocabulary_size()
        if size is not None:
            fast = getattr(self._tokenizer, "_tokenizer", self._tokenizer)
            self._masks = masks.Masks(masks.hf_vocabulary(fast, size), size)
            self._masks.prepare()
        progress(1.0)

    def check_constraint(self, constraint: Constraint) -> None:
        """Compile the constraint now, so that a schema llguidance cannot take is a 400 before any generation."""
        if self._masks is None:
            raise BackendError("this model's vocabulary size is unknown, so its output cannot be constrained")
        self._masks.matcher(constraint)

    def render_chat(self, messages: Sequence[ChatMessage]) -> tuple[str, tuple[str, ...]]:
        return hf.render_chat(self._tokenizer, messages)

    def _loaded(self) -> bool:
        return self._model is not None

    def _generate(
        self, prompt: str, options: SamplingOptions, cancel: threading.Event, result: Generation
    ) -> Generator[bytes, None, None]:
        import mlx.core as mx
        import numpy as np
        from mlx_lm import stream_generate
        from mlx_lm.sample_utils import make_logits_processors, make_sampler

        if options.seed is not None:
            mx.random.seed(options.seed)
        ids = hf.encode(getattr(self._tokenizer, "_tokenizer", self._tokenizer), prompt, 1 << 62)
        sampler = make_sampler(temp=options.temperature, top_p=options.top_p, top_k=options.top_k)
        bias = dict(options.logit_bias) or None
        processors = make_logits_processors(logit_bias=bias, repetition_penalty=options.repeat_penalty)
        if options.presence_penalty or options.frequency_penalty:
            processors.append(_answer_penalties(len(ids), options.presence_penalty, options.frequency_penalty))
        if options.constraint is not None and self._masks is not None:
            processors.append(_held_to(self._masks, self._masks.matcher(options.constraint), len(ids)))
        result.finish_reason = FinishReason.LENGTH
        for response in stream_generate(
            self._model,
            self._tokenizer,
            ids,
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
                yield response.text.encode("utf-8")
                continue
            if response.token is not None:
                result.completion_tokens = response.generation_tokens
                if options.logprobs is not None:
                    # mlx-lm's log probabilities come after its logits processors (bias and penalties).
                    values = np.array(response.logprobs.astype(mx.float32)).reshape(-1)
                    result.logprobs.append(probabilities.report(values, response.token, options.logprobs, self._piece))
            yield response.text.encode("utf-8")

    def check_prompt(self, prompt: str) -> None:
        """A prompt that cannot fit the context (when the model's config says it) is the client's 400 before the
        stream begins."""
        context = getattr(getattr(self._model, "args", None), "max_position_embeddings", None)
        if self._model is not None and context:
            hf.encode(getattr(self._tokenizer, "_tokenizer", self._tokenizer), prompt, int(context))

    def vocabulary_size(self) -> int | None:
        if self._model is None:
            return None
        args = getattr(self._model, "args", None)
        size = getattr(args, "vocab_size", None)
        return int(size) if size is not None else None

    def _piece(self, token: int) -> bytes:
        return str(self._tokenizer.decode([token])).encode("utf-8")

    def count_tokens(self, prompt: str) -> int:
        return hf.count(self._tokenizer, prompt)

    def unload(self) -> None:
        self._model = self._tokenizer = None


def _answer_penalties(prompt_length: int, presence: float, frequency: float) -> Callable[[Any, Any], Any]:
    """OpenAI's presence and frequency penalties as an mlx-lm logits processor: over the answer's tokens only
    (mlx-lm hands a processor the prompt's tokens and the answer's)."""
    import mlx.core as mx

    def penalize(tokens: Any, logits: Any) -> Any:
        answer = tokens[prompt_length:]
        if answer.size == 0:
            return logits
        counts = mx.zeros((logits.shape[-1],), dtype=logits.dtype).at[answer].add(1)
        return logits - (frequency * counts + presence * (counts > 0).astype(logits.dtype))

    return penalize


def _held_to(masking: masks.Masks, matcher: Any, prompt_length: int) -> Callable[[Any, Any], Any]:
    """A constraint as an mlx-lm logits processor: it feeds the matcher the token chosen last, then forbids
    every token the grammar does not allow next (last in the chain, so no bias can bring one back)."""
    import mlx.core as mx

    def mask(tokens: Any, logits: Any) -> Any:
        if tokens.size > prompt_length and not matcher.consume_token(int(tokens[-1].item())):
            raise BackendError(f"the constraint failed: {matcher.get_error()}")
        allowed = mx.array(masking.allowed(matcher))
        return mx.where(allowed, logits, mx.array(float("-inf"), dtype=logits.dtype))

    return mask


ENGINE = MlxBackend
"""What `backends.create` builds for this backend."""
