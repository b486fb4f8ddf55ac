"""llama.cpp through llama-cpp-python's low-level API, with continuous batching: one model load and one context
whose KV cache holds `slots` sequences, and one batch loop that advances every active request by a token per
llama.cpp call.

Each step's batch holds the next token of every sequence that is generating, then prompt chunks of sequences
that were admitted since (up to the batch size): a new request joins between two steps and a finished one leaves
and frees its sequence at once, so nobody waits for another's answer to end. A batch of sequences costs about
what a batch of prompt tokens does (SmolLM2 Q8_0 on 2 CPU cores: 8 tokens in one call at 2.7x the throughput of
eight calls; far more on a GPU; Q4_1, which llama.cpp's CPU kernels multiply a column at a time, 1.3x).

Each sequence has its own sampler chain (its seed, temperature, penalties), its own stop strings (in the
generation thread that reads it, through TextAssembler) and its own cancel. A slot keeps the tokens its last
request left in the cache: the next request placed there evaluates only what follows the shared prefix (a system
prompt, the earlier turns of a chat).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import queue
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from rbee.api.calls import Constraint
from rbee.api.wire import ChatMessage, FinishReason, SamplingOptions
from rbee.spec.backends import GGUF_CONTEXT, GGUF_SLOTS
from rbee.worker.backends import (
    BackendError,
    Generation,
    PromptTooLong,
    gguf_prompts,
    gguf_slots,
    handed_over,
    masks,
    penalties,
    prefixes,
    probabilities,
    served,
    vision,
)

DEFAULT_CONTEXT = GGUF_CONTEXT
DEFAULT_SLOTS = GGUF_SLOTS
BATCH = 512
"""Tokens per llama.cpp call: every generating sequence's next token, then prompt chunks."""


@dataclass(eq=False)
class _Sequence:
    """One request in the batch loop: its prompt, its sampler and where its output goes."""

    prompt: vision.Tokenized
    limit: int
    sampler: Any
    cancel: threading.Event
    result: Generation
    matcher: Any = None
    """With a constraint: llguidance's matcher, which says at each token what may come next."""
    out: queue.SimpleQueue[bytes | FinishReason | BackendError] = field(default_factory=queue.SimpleQueue)
    slot: int = -1
    done: int = 0
    """How many of the prompt's tokens are in the cache."""
    next_token: int | None = None
    """The token sampled last: it goes into the next batch."""
    left: bool = False
    """Its reader stopped reading (a stop string): it leaves at the next step."""
    logprobs: int | None = None
    """Report each token's log probability with this many alternatives (None: do not)."""
    penalties: penalties.Penalties | None = None
    """Logit bias and penalties, applied to its logits before its sampler chain (None: none to apply)."""


class GgufBackend:
    name = "gguf"
    batches = True
    sees = True
    """With a multimodal projector (hive.yaml's `mmproj`), chat messages may hold images."""
    sampling = frozenset({"presence_penalty", "frequency_penalty", "logit_bias", "logprobs"})

    def __init__(
        self,
        model_path: str,
        *,
        device: str = "cpu",
        threads: int | None = None,
        slots: int | None = None,
        context: int | None = None,
        mmproj_path: str | None = None,
    ) -> None:
        self.model_path = model_path
        self.device = "cpu" if device == "auto" else device
        self.threads = threads or max(1, os.cpu_count() or 1)
        self.slots = max(1, slots or DEFAULT_SLOTS)
        self.context = context or DEFAULT_CONTEXT
        self._model: Any = None
        self._ctx: Any = None
        self._batch: Any = None
        self._prompts: gguf_prompts.Prompts | None = None
        self._slots = [gguf_slots.Slot() for _ in range(self.slots)]
        self._waiting: list[_Sequence] = []
        self._active: list[_Sequence] = []
        self._wake = threading.Condition()
        self._loop: threading.Thread | None = None
        self._closing = False
        self._masks: masks.Masks | None = None
        self._projector = vision.Projector(mmproj_path) if mmproj_path else None

    # -- loading ---------------------------------------------------------------------------------------------

    def load(self, progress: Callable[[float], None]) -> None:
        import llama_cpp
        from llama_cpp import _internals, _logger

        _logger.set_verbose(False)  # llama.cpp's errors only, in the worker's log
        # llama-cpp-python reports no loading progress (its callback is not exposed): the hive sees loading -> idle.
        model_params = llama_cpp.llama_model_default_params()
        model_params.n_gpu_layers = 0 if self.device == "cpu" else -1
        if self.device.startswith("cuda:"):
            model_params.main_gpu = int(self.device.split(":", 1)[1])
        model = _internals.LlamaModel(path_model=self.model_path, params=model_params, verbose=False)
        context_params = llama_cpp.llama_context_default_params()
        context_params.n_ctx = self.context * self.slots
        context_params.n_batch = context_params.n_ubatch = BATCH
        context_params.n_seq_max = self.slots
        # A cache of `context` tokens per sequence, not one shared cache: with the shared one, a seeded answer came
        # out differently when other requests were in the batch (their cells change the order attention sums in),
        # 0-1 of 4 equal against 4 of 4 here, for ~5% of aggregate speed (8 streams: 174 against 184 tok/s).
        context_params.kv_unified = False
        # Flash attention where the device has it (on this CPU, 8 streams: 182 tok/s with it, 133 without).
        context_params.flash_attn_type = llama_cpp.LLAMA_FLASH_ATTN_TYPE_AUTO
        context_params.n_threads = context_params.n_threads_batch = self.threads
        try:
            self._ctx = _internals.LlamaContext(model=model, params=context_params, verbose=False)
        except ValueError as error:
            model.close()
            raise BackendError(
                f"llama.cpp could not make a context of {self.slots} x {self.context} tokens ({error}); "
                "lower the worker's slots or context"
            ) from None
        self._batch = _internals.LlamaBatch(n_tokens=BATCH, embd=0, n_seq_max=1, verbose=False)
        self._model = model
        try:
            if self._projector is not None:
                self._projector.load(model.model, self.threads, use_gpu=self.device != "cpu")
        except BackendError:
            self.unload()
            raise
        self._prompts = gguf_prompts.Prompts(model, self._projector, keep=4 * self.slots)
        self._masks = masks.Masks(masks.llama_vocabulary(model.vocab), model.n_vocab())
        self._masks.prepare()
        self._loop = threading.Thread(target=self._run, name="batch-loop", daemon=True)
        self._loop.start()
        progress(1.0)

    def render_chat(self, messages: Sequence[ChatMessage]) -> tuple[str, tuple[str, ...]]:
        assert self._prompts is not None
        return self._prompts.render(messages)

    def count_tokens(self, prompt: str) -> int:
        assert self._prompts is not None
        return self._prompts.count(prompt)

    def check_prompt(self, prompt: str) -> None:
        """Count the prompt with the model's own tokenizer before a stream begins: one that cannot fit a slot is
        the client's mistake (400), not a generation that fails after it has started (502)."""
        if self._prompts is None:
            return
        tokens = len(self._prompts.counted(prompt).tokens)
        if tokens >= self.context:
            raise PromptTooLong(
                f"the prompt is {tokens} tokens and the model's context holds {self.context}; shorten it"
            )

    def check_constraint(self, constraint: Constraint) -> None:
        """Compile the constraint now, so that a schema llguidance cannot take is a 400 before any generation."""
        if self._masks is not None:
            self._masks.matcher(constraint)

    # -- one request -----------------------------------------------------------------------------------------

    def generate(
        self, prompt: str, options: SamplingOptions, cancel: threading.Event, result: Generation
    ) -> Iterator[str]:
        if self._model is None or self._loop is None:
            raise BackendError("the model is not loaded")
        assert self._prompts is not None
        made = self._prompts.take(prompt)
        tokens = made.tokens
        result.prompt_tokens = len(tokens)
        room = self.context - len(tokens)
        if room < 1:
            made.close()
            raise BackendError(f"the prompt is {len(tokens)} tokens and the context holds {self.context}; shorten it")
        masking = self._masks
        matcher = masking.matcher(options.constraint) if masking is not None and options.constraint else None
        limit = min(options.max_tokens, room)
        sequence = _Sequence(made, limit, penalties.llama_chain(options), cancel, result, matcher)
        sequence.logprobs = options.logprobs
        adding = penalties.Penalties(
            dict(options.logit_bias).items(),
            options.repeat_penalty,
            options.frequency_penalty,
            options.presence_penalty,
        )
        sequence.penalties = adding if adding.active else None
        result.finish_reason = FinishReason.LENGTH
        pieces = handed_over(sequence.out, cancel, result)
        yield from served(self._wake, self._waiting, sequence, pieces, options.stop, result)

    def vocabulary_size(self) -> int | None:
        return self._model.n_vocab() if self._model is not None else None

    # -- the batch loop --------------------------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._wake:
                while not self._closing and not self._active and not self._waiting:
                    self._wake.wait()
                if self._closing:
                    break
                self._admit()
            try:
                self._step()
            except Exception as error:  # a failed llama.cpp call ends every request in it, never the loop
                failure = BackendError(f"llama.cpp failed: {error}")
                for sequence in list(self._active):
                    self._finish(sequence, failure)
        for sequence in self._active + self._waiting:
            sequence.out.put(BackendError("the worker is stopping"))

    def _admit(self) -> None:
        """Give waiting requests free slots, each the one whose cache shares the longest start with its prompt."""
        while self._waiting:
            free = [index for index, slot in enumerate(self._slots) if not slot.busy]
            if not free:
                return
            sequence = self._waiting.pop(0)
            tokens = sequence.prompt.tokens
            index = gguf_slots.place(self._slots, free, tokens)
            slot = self._slots[index]
            # At least the prompt's last token is evaluated again: its logits pick the first token of the answer.
            keep = min(prefixes.shared(slot.cached, tokens), len(tokens) - 1)
            cut = sequence.prompt.image_at(keep)
            keep = cut[0] if cut is not None else keep  # an image is evaluated whole or not at all
            self._ctx.kv_cache_seq_rm(index, keep, -1)
            slot.cached = tokens[:keep]
            slot.busy = True
            sequence.slot, sequence.done = index, keep
            sequence.result.cached_tokens = keep
            self._active.append(sequence)

    def _step(self) -> None:
        import llama_cpp
        import numpy as np

        for sequence in [s for s in self._active if s.left or s.cancel.is_set()]:
            self._finish(sequence, FinishReason.CANCELLED)
        plan = self._plan()
        if not plan:
            return
        batch = self._batch.batch
        batch.n_tokens = 0
        sampled: list[tuple[_Sequence, int]] = []
        fillers: list[tuple[int, int]] = []

        def add(slot: int, entry: gguf_slots.Entry) -> None:
            at = batch.n_tokens
            cached = self._slots[slot].cached
            batch.token[at] = entry.token
            batch.pos[at] = len(cached)
            batch.seq_id[at][0] = slot
            batch.n_seq_id[at] = 1
            batch.logits[at] = entry.logits
            batch.n_tokens = at + 1
            if entry.sequence is None:
                fillers.append((slot, len(cached)))
                return
            cached.append(entry.token)
            if entry.logits:
                sampled.append((entry.sequence, at))

        for slot, entry in gguf_slots.in_batch_order(plan):  # see gguf_slots
            add(slot, entry)
        try:
            self._ctx.decode(self._batch)
        finally:
            for slot, position in fillers:  # what a filler left in a free slot's cache goes again
                self._ctx.kv_cache_seq_rm(slot, position, -1)
        vocab, n_vocab = self._model.vocab, self._model.n_vocab()
        for sequence, at in sampled:
            logits = llama_cpp.llama_get_logits_ith(self._ctx.ctx, at)
            if sequence.matcher is not None and self._masks is not None:
                self._masks.apply(sequence.matcher, logits)
            row = raw = None
            if sequence.penalties is not None or sequence.logprobs is not None:
                row = np.ctypeslib.as_array(logits, shape=(n_vocab,))
                raw = row.copy() if sequence.logprobs is not None else row  # the model's own, before penalties
            if sequence.penalties is not None:
                sequence.penalties.apply(row)
            token = llama_cpp.llama_sampler_sample(sequence.sampler.sampler, self._ctx.ctx, at)
            if sequence.penalties is not None:
                sequence.penalties.accept(token)
            if sequence.matcher is not None and not sequence.matcher.consume_token(token):
                self._finish(sequence, BackendError(f"the constraint failed: {sequence.matcher.get_error()}"))
                continue
            if llama_cpp.llama_vocab_is_eog(vocab, token):
                self._finish(sequence, FinishReason.STOP)
                continue
            if sequence.logprobs is not None:
                sequence.result.logprobs.append(probabilities.report(raw, token, sequence.logprobs, self._piece))
            sequence.result.completion_tokens += 1
            sequence.out.put(self._piece(token))
            if sequence.result.completion_tokens >= sequence.limit:
                self._finish(sequence, FinishReason.LENGTH)
            else:
                sequence.next_token = token

    def _plan(self) -> dict[int, list[gguf_slots.Entry]]:
        """What each slot puts into the next batch: the next token of every answer, then prompt chunks as far as
        the batch has room, then fillers for short gaps between the slots in it."""
        plan: dict[int, list[gguf_slots.Entry]] = {}
        room = BATCH
        for sequence in self._active:  # the answers first: one token each
            if sequence.next_token is not None:
                plan[sequence.slot] = [gguf_slots.Entry(sequence.next_token, True, sequence)]
                sequence.next_token = None
                room -= 1
        for sequence in self._active:  # then prompts, as far as the batch has room
            tokens, images = sequence.prompt.tokens, sequence.prompt.images
            while sequence.done < len(tokens) and room > 0:
                image = images.get(sequence.done)
                if image is not None:
                    if sequence.slot in plan:
                        break  # the text before the image goes into the cache first: the image at the next step
                    self._see(sequence, image)
                    continue
                sequence.done += 1
                plan.setdefault(sequence.slot, []).append(
                    gguf_slots.Entry(tokens[sequence.done - 1], sequence.done == len(tokens), sequence)
                )
                room -= 1
        gguf_slots.fill_gaps(plan, self._slots, self.context, room)
        return plan

    def _see(self, sequence: _Sequence, image: vision.Image) -> None:
        """An image of a prompt into its sequence's cache, at once (mtmd decodes it in calls of its own)."""
        cached = self._slots[sequence.slot].cached
        self._projector.evaluate(self._ctx.ctx, image, len(cached), sequence.slot, BATCH)  # type: ignore[union-attr]
        cached += sequence.prompt.tokens[sequence.done : sequence.done + image.positions]
        sequence.done += image.positions

    def _finish(self, sequence: _Sequence, ending: FinishReason | BackendError) -> None:
        if sequence in self._active:
            self._active.remove(sequence)
            self._slots[sequence.slot].busy = False
        sequence.out.put(ending)
        sequence.sampler.close()
        sequence.prompt.close()

    def _piece(self, token: int) -> bytes:
        import llama_cpp

        buffer = ctypes.create_string_buffer(256)
        size = llama_cpp.llama_token_to_piece(self._model.vocab, token, buffer, len(buffer), 0, False)
        if size < 0:  # a piece longer than the buffer: ask again with the size it needs
            buffer = ctypes.create_string_buffer(-size)
            size = llama_cpp.llama_token_to_piece(self._model.vocab, token, buffer, len(buffer), 0, False)
        return buffer.raw[: max(size, 0)]

    def unload(self) -> None:
        with self._wake:
            self._closing = True
            self._wake.notify()
        if self._loop is not None:
            self._loop.join(timeout=10)
        with contextlib.suppress(Exception):
            if self._projector is not None:
                self._projector.close()
            if self._batch is not None:
                self._batch.close()
            if self._ctx is not None:
                self._ctx.close()
            if self._model is not None:
                self._model.close()
        self._model = self._ctx = self._batch = None


ENGINE = GgufBackend
"""What `backends.create` builds for this backend."""
