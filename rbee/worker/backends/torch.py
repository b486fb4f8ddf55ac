"""transformers + torch on CUDA or CPU, for Hugging Face safetensors folders, with continuous batching.

One loop thread owns the model: it evaluates each admitted prompt alone (a prefill, of only what follows the longest
beginning kept from an earlier prompt: prefixes.py), then advances every active request by a token per forward
pass, the batch of `slots` rows in one KV cache (rows.py). A request joins between
two steps and leaves at once; each has its own torch.Generator (a seeded answer repeats), its own penalties,
constraint and cancel. The loop is rbee's own, not transformers' continuous batching, which draws every request
from one generator: seeded answers would depend on what else was in the batch. torch's thread count is set in the
loop thread itself: set only in the loading thread, generation ran at half speed (FACTS.md).
"""

from __future__ import annotations

import inspect
import os
import queue
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from rbee.api.calls import Constraint
from rbee.api.wire import ChatMessage, FinishReason, SamplingOptions
from rbee.spec import backends
from rbee.worker.backends import (
    BackendError,
    Generation,
    hf,
    joining,
    masks,
    prefixes,
    probabilities,
    rows,
    served,
)

DEFAULT_SLOTS = backends.TORCH_SLOTS
"""Rows of the batch when hive.yaml names no `slots` (as for gguf)."""


@dataclass(eq=False)
class _Sequence:
    """One request in the batch loop."""

    ids: list[int]
    limit: int
    options: SamplingOptions
    cancel: threading.Event
    result: Generation
    generator: Any
    matcher: Any = None
    out: queue.SimpleQueue[int | FinishReason | BackendError] = field(default_factory=queue.SimpleQueue)
    row: int = -1
    start: int = 0
    """Its first column in the cache."""
    position: int = 0
    """The rotary position of its next token."""
    generated: list[int] = field(default_factory=list)
    next_token: int | None = None
    left: bool = False
    """Its reader stopped reading (a stop string): it leaves at the next step."""


class TorchBackend:
    name = "torch"
    batches = True
    sampling = frozenset({"presence_penalty", "frequency_penalty", "logit_bias", "logprobs"})

    def __init__(
        self,
        model_path: str,
        *,
        device: str = "cpu",
        threads: int | None = None,
        slots: int | None = None,
        context: int | None = None,
    ) -> None:
        self.model_path = model_path
        self.device = "cpu" if device == "auto" else device
        self.threads = threads or max(1, os.cpu_count() or 1)
        self.slots = max(1, slots or DEFAULT_SLOTS)
        self.context_asked = context
        self._model: Any = None
        self._tokenizer: Any = None
        self._stop_ids: frozenset[int] = frozenset()
        self._cache_arg = "past_key_values"
        self._masks: masks.Masks | None = None
        self._cache: rows.RowCache | None = None
        self._prefixes = prefixes.Prefixes()
        self._waiting: list[_Sequence] = []
        self._active: list[_Sequence] = []
        self._wake = threading.Condition()
        self._loop: threading.Thread | None = None
        self._closing = False

    def load(self, progress: Callable[[float], None]) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        torch.set_num_threads(self.threads)
        progress(0.05)
        # Said explicitly, not left to defaults: a model folder's own code never runs, and weights load only from
        # safetensors (a pickled .bin would run whatever it holds).
        tokenizer = AutoTokenizer.from_pretrained(self.model_path, trust_remote_code=False)
        progress(0.2)
        dtype = torch.float32 if self.device == "cpu" else torch.float16
        model = AutoModelForCausalLM.from_pretrained(
            self.model_path, dtype=dtype, trust_remote_code=False, use_safetensors=True
        )
        progress(0.9)
        model = model.to(self._torch_device()).eval()
        stops = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
        configured = getattr(model.generation_config, "eos_token_id", None)
        stops.update(configured if isinstance(configured, list) else [configured] if configured is not None else [])
        self._model, self._tokenizer, self._stop_ids = model, tokenizer, frozenset(stops)
        if "cache" in inspect.signature(model.forward).parameters:
            self._cache_arg = "cache"  # transformers 5 renamed past_key_values
        size = int(model.config.vocab_size)
        self._masks = masks.Masks(masks.hf_vocabulary(tokenizer, size), size)
        self._masks.prepare()
        self._cache = rows.RowCache(self.slots, 2 * self._context(), self._torch_device())
        self._closing = False
        self._loop = threading.Thread(target=self._run, name="batch-loop", daemon=True)
        self._loop.start()
        progress(1.0)

    def check_constraint(self, constraint: Constraint) -> None:
        """Compile the constraint now, so that a schema llguidance cannot take is a 400 before any generation."""
        if self._masks is not None:
            self._masks.matcher(constraint)

    def _torch_device(self) -> str:
        return "cuda:0" if self.device == "cuda" else self.device

    def render_chat(self, messages: Sequence[ChatMessage]) -> tuple[str, tuple[str, ...]]:
        return hf.render_chat(self._tokenizer, messages)

    # -- one request -------------------------------------------------------------------------------------------

    def generate(
        self, prompt: str, options: SamplingOptions, cancel: threading.Event, result: Generation
    ) -> Iterator[str]:
        import torch

        if self._model is None or self._loop is None:
            raise BackendError("the model is not loaded")
        context = self._context()
        ids = hf.encode(self._tokenizer, prompt, context)
        result.prompt_tokens = len(ids)
        result.finish_reason = FinishReason.LENGTH
        generator = torch.Generator(device=self._torch_device())
        generator.manual_seed(options.seed if options.seed is not None else torch.seed())
        masking = self._masks
        matcher = masking.matcher(options.constraint) if masking is not None and options.constraint else None
        limit = min(options.max_tokens, context - len(ids))
        sequence = _Sequence(ids, limit, options, cancel, result, generator, matcher)
        tokens = hf.token_texts(self._tokenizer, sequence.out, cancel, result)
        yield from served(self._wake, self._waiting, sequence, tokens, options.stop, result)

    # -- the batch loop ----------------------------------------------------------------------------------------

    def _run(self) -> None:
        import torch

        torch.set_num_threads(self.threads)
        while True:
            joined = joining(self._wake, self._waiting, self._active, self.slots, lambda: self._closing)
            if joined is None:
                break
            try:
                with torch.inference_mode():
                    for sequence in joined:
                        self._prefill(sequence)
                    self._step()
            except Exception as error:  # a failed forward pass ends every request in it, never the loop
                failure = BackendError(f"torch failed: {error}")
                for sequence in dict.fromkeys([*joined, *self._active]):
                    self._finish(sequence, failure)
        for sequence in self._active + self._waiting:
            sequence.out.put(BackendError("the worker is stopping"))

    def _prefill(self, sequence: _Sequence) -> None:
        import torch

        assert self._cache is not None
        if sequence.cancel.is_set() or sequence.left:
            sequence.out.put(FinishReason.CANCELLED)
            return
        if not self._active:
            self._cache.reset()
        sequence.row = len(self._active)
        self._active.append(sequence)
        length = len(sequence.ids)
        starts = [s.start for s in self._active[:-1]]
        kept = self._prefixes.find(sequence.ids)
        reused = kept[0]
        sequence.start = self._cache.prefill(sequence.row, length, starts, kept)
        self._moved(starts)
        device, dtype = self._torch_device(), self._model.dtype
        # the tokens after the kept beginning see it and, causally, each other
        causal = torch.full((length - reused, length), torch.finfo(dtype).min, dtype=dtype, device=device)
        out = self._model(
            input_ids=torch.tensor([sequence.ids[reused:]], device=device),
            position_ids=torch.arange(reused, length, device=device).unsqueeze(0),
            attention_mask=causal.triu(reused + 1)[None, None],
            use_cache=True,
            logits_to_keep=1,
            **{self._cache_arg: self._cache},
        )
        sequence.position = length
        sequence.result.cached_tokens = reused
        self._prefixes.keep(sequence.ids, *self._cache.columns(sequence.row, sequence.start, length))
        self._take(sequence, out.logits[0, -1, :].float())

    def _step(self) -> None:
        import torch

        assert self._cache is not None
        for sequence in [s for s in self._active if s.left or s.cancel.is_set()]:
            self._finish(sequence, FinishReason.CANCELLED)
        if not self._active:
            return
        count = len(self._active)
        starts = [s.start for s in self._active]
        self._cache.step(count, starts)
        self._moved(starts)
        device = self._torch_device()
        tokens = [s.next_token for s in self._active]
        out = self._model(
            input_ids=torch.tensor(tokens, device=device)[:, None],
            position_ids=torch.tensor([s.position for s in self._active], device=device)[:, None],
            attention_mask=self._cache.mask(count, self._model.dtype),  # each row sees the columns it wrote
            use_cache=True,
            **{self._cache_arg: self._cache},
        )
        for index, sequence in enumerate(list(self._active)):  # row i of the logits: _active[i] when it ran
            sequence.position += 1
            self._take(sequence, out.logits[index, -1, :].float())

    def _moved(self, starts: list[int]) -> None:
        """The cache shifted its columns: the active rows' starts, as it left them."""
        for sequence, start in zip(self._active, starts, strict=False):
            sequence.start = start

    def _take(self, sequence: _Sequence, logits: Any) -> None:
        """Sample `sequence`'s next token from its row's logits and hand it over, or end it."""
        import torch

        options, masking, matcher = sequence.options, self._masks, sequence.matcher
        if matcher is not None and masking is not None:
            banned = torch.from_numpy(~masking.allowed(matcher)).to(logits.device)
            logits = logits.masked_fill(banned, float("-inf"))
        raw = logits.cpu().numpy().copy() if options.logprobs is not None else None
        token = _sample(logits, options, (sequence.ids, sequence.generated), sequence.generator)
        if matcher is not None and not matcher.consume_token(token):
            self._finish(sequence, BackendError(f"the constraint failed: {matcher.get_error()}"))
            return
        if token in self._stop_ids:
            self._finish(sequence, FinishReason.STOP)
            return
        if raw is not None:
            sequence.result.logprobs.append(probabilities.report(raw, token, options.logprobs or 0, self._piece))
        sequence.generated.append(token)
        sequence.result.completion_tokens = len(sequence.generated)
        sequence.out.put(token)
        if len(sequence.generated) >= sequence.limit:
            self._finish(sequence, FinishReason.LENGTH)
        else:
            sequence.next_token = token

    def _finish(self, sequence: _Sequence, ending: FinishReason | BackendError) -> None:
        if sequence in self._active:
            row, last = sequence.row, self._active[-1]
            self._active.remove(sequence)
            if last is not sequence and self._cache is not None:  # the last row moves into the freed one
                self._cache.move(last.row, row)
                last.row = row
                self._active.remove(last)
                self._active.insert(row, last)
        sequence.out.put(ending)

    # -- the rest ----------------------------------------------------------------------------------------------

    def _context(self) -> int:
        """hive.yaml's `context` (or TORCH_CONTEXT), at most what the model was trained for: the bound the plan and
        the preflight count its cache by."""
        largest = int(getattr(self._model.config, "max_position_embeddings", 2048))
        return min(self.context_asked or backends.TORCH_CONTEXT, largest)

    def check_prompt(self, prompt: str) -> None:
        """A prompt that cannot fit the context is the client's 400 before the stream begins."""
        if self._model is not None:
            hf.encode(self._tokenizer, prompt, self._context())

    def count_tokens(self, prompt: str) -> int:
        return hf.count(self._tokenizer, prompt)

    def vocabulary_size(self) -> int | None:
        return int(self._model.config.vocab_size) if self._model is not None else None

    def _piece(self, token: int) -> bytes:
        return str(self._tokenizer.decode([token])).encode("utf-8")

    def unload(self) -> None:
        with self._wake:
            self._closing = True
            self._wake.notify()
        if self._loop is not None:
            self._loop.join(timeout=10)
        self._model = self._tokenizer = self._cache = self._loop = None
        self._prefixes.clear()
        try:
            import torch

            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        except ImportError:
            pass


def _sample(logits: Any, options: SamplingOptions, seen: tuple[list[int], list[int]], generator: Any) -> int:
    """One token from `logits`: logit_bias; OpenAI's presence and frequency penalties over the answer so far;
    the repeat penalty over prompt and answer; then greedy at temperature 0, else temperature, top-k and top-p
    sampling with the request's generator."""
    import torch

    prompt, answer = seen
    for token, bias in options.logit_bias:
        logits[token] += bias
    if answer and (options.presence_penalty or options.frequency_penalty):
        counts = torch.bincount(torch.tensor(answer, device=logits.device), minlength=logits.shape[-1])
        counts = counts[: logits.shape[-1]].to(logits.dtype)
        logits -= options.frequency_penalty * counts + options.presence_penalty * (counts > 0).to(logits.dtype)
    if options.repeat_penalty != 1.0 and (prompt or answer):
        previous = torch.tensor(sorted(set(prompt) | set(answer)), device=logits.device)
        values = logits[previous]
        logits[previous] = torch.where(values > 0, values / options.repeat_penalty, values * options.repeat_penalty)
    if options.temperature <= 0:
        return int(torch.argmax(logits))
    logits = logits / options.temperature
    if options.top_k > 0:
        kth = torch.topk(logits, min(options.top_k, logits.shape[-1])).values[-1]
        logits = torch.where(logits < kth, torch.full_like(logits, float("-inf")), logits)
    probs = torch.softmax(logits, dim=-1)
    if options.top_p < 1.0:
        sorted_probs, order = torch.sort(probs, descending=True)
        keep = torch.cumsum(sorted_probs, dim=-1) - sorted_probs < options.top_p
        sorted_probs = sorted_probs * keep
        probs = torch.zeros_like(probs).scatter(0, order, sorted_probs)
        probs = probs / probs.sum()
    return int(torch.multinomial(probs, 1, generator=generator))


ENGINE = TorchBackend
"""What `backends.create` builds for this backend."""
