"""mlx-lm for Apple Metal, with continuous batching; on Linux the same code runs on `mlx[cpu]`, which is how CI
tests it.

One loop thread owns mlx-lm's BatchGenerator: requests join it between steps (their prompts evaluated together,
then one token of every active request per forward pass) and leave it at once (finished, cancelled, or their
reader gone). Each request samples with its own random key (a seeded answer repeats whatever else is in the
batch), and has its own logits processors: bias, repeat penalty, OpenAI's penalties and a constraint.
"""

from __future__ import annotations

import os
import queue
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from rbee.api.calls import Constraint
from rbee.api.wire import ChatMessage, FinishReason, SamplingOptions
from rbee.worker.backends import BackendError, Generation, hf, joining, masks, probabilities, served

DEFAULT_SLOTS = 4
"""Requests in the batch when hive.yaml names no `slots` (as for gguf and torch)."""


@dataclass(eq=False)
class _Sequence:
    """One request in the batch loop."""

    ids: list[int]
    limit: int
    options: SamplingOptions
    cancel: threading.Event
    result: Generation
    sampler: Callable[[Any], Any]
    processors: list[Callable[[Any, Any], Any]]
    out: queue.SimpleQueue[int | FinishReason | BackendError] = field(default_factory=queue.SimpleQueue)
    failed: BackendError | None = None
    """Set by its constraint's processor inside a step: it leaves after that step, the others go on."""
    left: bool = False
    """Its reader stopped reading (a stop string): it leaves at the next step."""


class MlxBackend:
    name = "mlx"
    batches = True
    sampling = frozenset({"presence_penalty", "frequency_penalty", "logit_bias", "logprobs"})

    def __init__(
        self,
        model_path: str,
        *,
        device: str = "auto",
        threads: int | None = None,
        slots: int | None = None,
        context: int | None = None,
    ) -> None:
        self.model_path = model_path
        self.device = "metal" if device in ("auto", "metal") else "cpu"
        self.slots = max(1, slots or DEFAULT_SLOTS)
        self._model: Any = None
        self._tokenizer: Any = None
        self._masks: masks.Masks | None = None
        self._stop_ids: list[int] = []
        self._waiting: list[_Sequence] = []
        self._active: dict[int, _Sequence] = {}
        self._wake = threading.Condition()
        self._loop: threading.Thread | None = None
        self._closing = False

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
        self._stop_ids = sorted(getattr(self._tokenizer, "eos_token_ids", None) or [])
        self._closing = False
        self._loop = threading.Thread(target=self._run, name="batch-loop", daemon=True)
        self._loop.start()
        progress(1.0)

    def check_constraint(self, constraint: Constraint) -> None:
        """Compile the constraint now, so that a schema llguidance cannot take is a 400 before any generation."""
        if self._masks is None:
            raise BackendError("this model's vocabulary size is unknown, so its output cannot be constrained")
        self._masks.matcher(constraint)

    def render_chat(self, messages: Sequence[ChatMessage]) -> tuple[str, tuple[str, ...]]:
        return hf.render_chat(self._tokenizer, messages)

    # -- one request -------------------------------------------------------------------------------------------

    def generate(
        self, prompt: str, options: SamplingOptions, cancel: threading.Event, result: Generation
    ) -> Iterator[str]:
        from mlx_lm.sample_utils import make_logits_processors

        if self._model is None or self._loop is None:
            raise BackendError("the model is not loaded")
        ids = hf.encode(getattr(self._tokenizer, "_tokenizer", self._tokenizer), prompt, 1 << 62)
        result.prompt_tokens = len(ids)
        result.finish_reason = FinishReason.LENGTH
        bias = dict(options.logit_bias) or None
        processors = make_logits_processors(logit_bias=bias, repetition_penalty=options.repeat_penalty)
        if options.presence_penalty or options.frequency_penalty:
            processors.append(_answer_penalties(len(ids), options.presence_penalty, options.frequency_penalty))
        sequence = _Sequence(ids, options.max_tokens, options, cancel, result, _sampler(options), processors)
        if options.constraint is not None and self._masks is not None:
            processors.append(_held_to(self._masks, self._masks.matcher(options.constraint), len(ids), sequence))
        tokens = hf.token_texts(getattr(self._tokenizer, "_tokenizer", self._tokenizer), sequence.out, cancel, result)
        yield from served(self._wake, self._waiting, sequence, tokens, options.stop, result)

    # -- the batch loop ----------------------------------------------------------------------------------------

    def _run(self) -> None:
        batch = self._new_batch()
        while True:
            joined = joining(self._wake, self._waiting, self._active, self.slots, lambda: self._closing)
            if joined is None:
                break
            try:
                self._join(batch, joined)
                self._step(batch)
            except Exception as error:  # a failed step ends every request in it, never the loop
                failure = BackendError(f"mlx failed: {error}")
                for sequence in [*joined, *self._active.values()]:
                    sequence.out.put(failure)
                self._active.clear()
                batch.close()
                batch = self._new_batch()
        batch.close()
        for sequence in [*self._active.values(), *self._waiting]:
            sequence.out.put(BackendError("the worker is stopping"))

    def _new_batch(self) -> Any:
        from mlx_lm.generate import BatchGenerator

        return BatchGenerator(
            self._model,
            stop_tokens=[[token] for token in self._stop_ids],
            completion_batch_size=self.slots,
            prefill_batch_size=self.slots,
        )

    def _join(self, batch: Any, joined: list[_Sequence]) -> None:
        for sequence in joined:
            if sequence.cancel.is_set() or sequence.left:
                sequence.out.put(FinishReason.CANCELLED)
                continue
            (uid,) = batch.insert(
                [sequence.ids],
                max_tokens=[sequence.limit],
                samplers=[sequence.sampler],
                logits_processors=[sequence.processors],
            )
            self._active[uid] = sequence

    def _step(self, batch: Any) -> None:
        import mlx.core as mx
        import numpy as np

        gone = [uid for uid, s in self._active.items() if s.left or s.cancel.is_set()]
        if gone:
            batch.remove(gone)
            for uid in gone:
                self._active.pop(uid).out.put(FinishReason.CANCELLED)
        if not self._active:
            return
        for response in batch.next_generated():
            sequence = self._active.get(response.uid)
            if sequence is None:
                continue
            if sequence.failed is not None:
                self._leave(batch, response, sequence.failed)
                continue
            token = int(response.token)
            if token in self._stop_ids:
                self._leave(batch, response, FinishReason.STOP)
                continue
            if sequence.options.logprobs is not None:
                # mlx-lm's log probabilities come after the logits processors (bias and penalties).
                values = np.array(response.logprobs.astype(mx.float32)).reshape(-1)
                sequence.result.logprobs.append(
                    probabilities.report(values, token, sequence.options.logprobs, self._piece)
                )
            sequence.result.completion_tokens += 1
            sequence.out.put(token)
            if response.finish_reason is not None:
                self._leave(batch, response, FinishReason.LENGTH)

    def _leave(self, batch: Any, response: Any, ending: FinishReason | BackendError) -> None:
        sequence = self._active.pop(response.uid)
        if response.finish_reason is None:  # still in mlx-lm's batch: it ended here, not there
            batch.remove([response.uid])
        sequence.out.put(ending)

    # -- the rest ----------------------------------------------------------------------------------------------

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
        with self._wake:
            self._closing = True
            self._wake.notify()
        if self._loop is not None:
            self._loop.join(timeout=10)
        self._model = self._tokenizer = self._loop = None


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


def _held_to(masking: masks.Masks, matcher: Any, prompt_length: int, sequence: _Sequence) -> Callable[[Any, Any], Any]:
    """A constraint as an mlx-lm logits processor: it feeds the matcher the token chosen last, then forbids
    every token the grammar does not allow next (last in the chain, so no bias can bring one back). A token the
    grammar refuses fails only its own request (the loop ends it after the step), never the batch."""
    import mlx.core as mx

    def mask(tokens: Any, logits: Any) -> Any:
        if sequence.failed is not None:
            return logits
        if tokens.size > prompt_length and not matcher.consume_token(int(tokens[-1].item())):
            sequence.failed = BackendError(f"the constraint failed: {matcher.get_error()}")
            return logits
        allowed = mx.array(masking.allowed(matcher))
        return mx.where(allowed, logits, mx.array(float("-inf"), dtype=logits.dtype))

    return mask


def _sampler(options: SamplingOptions) -> Callable[[Any], Any]:
    """The request's sampler, drawing from its own key: greedy at temperature 0, else top-k, top-p and temperature
    (mlx-lm's samplers draw from one global key, which would make a seeded answer depend on the batch)."""
    import mlx.core as mx
    from mlx_lm.sample_utils import apply_top_k, apply_top_p

    if options.temperature <= 0:
        return lambda logprobs: mx.argmax(logprobs, axis=-1)
    key = mx.random.key(options.seed if options.seed is not None else int.from_bytes(os.urandom(4)))

    def sample(logprobs: Any) -> Any:
        nonlocal key
        key, draw = mx.random.split(key)
        if 0 < options.top_k < logprobs.shape[-1]:
            logprobs = apply_top_k(logprobs, options.top_k)
        if 0 < options.top_p < 1.0:
            logprobs = apply_top_p(logprobs, options.top_p)
        return mx.random.categorical(logprobs * (1.0 / options.temperature), key=draw)

    return sample


ENGINE = MlxBackend
"""What `backends.create` builds for this backend."""
