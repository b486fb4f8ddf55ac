"""transformers + torch on CUDA or CPU, for Hugging Face safetensors folders.

The token loop is rbee's own (one forward pass per token with the KV cache), so cancel takes effect between
tokens, a seeded request repeats exactly, and no streamer thread is involved. torch's thread count is set in
the generating thread itself: set only in the loading thread, generation ran at half speed (FACTS.md).
"""

from __future__ import annotations

import inspect
import os
import threading
from collections.abc import Callable, Generator, Sequence
from typing import Any

from rbee.api.calls import Constraint
from rbee.api.wire import ChatMessage, FinishReason, SamplingOptions
from rbee.worker.backends import BackendError, Generation, OneAtATime, hf, masks, probabilities


class TorchBackend(OneAtATime):
    name = "torch"
    sampling = frozenset({"presence_penalty", "frequency_penalty", "logit_bias", "logprobs"})

    def __init__(self, model_path: str, *, device: str = "cpu", threads: int | None = None) -> None:
        self.model_path = model_path
        self.device = "cpu" if device == "auto" else device
        self.threads = threads or max(1, os.cpu_count() or 1)
        self._model: Any = None
        self._tokenizer: Any = None
        self._stop_ids: frozenset[int] = frozenset()
        self._cache_arg = "past_key_values"
        self._lock = threading.Lock()
        self._masks: masks.Masks | None = None

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
        progress(1.0)

    def check_constraint(self, constraint: Constraint) -> None:
        """Compile the constraint now, so that a schema llguidance cannot take is a 400 before any generation."""
        if self._masks is not None:
            self._masks.matcher(constraint)

    def _torch_device(self) -> str:
        return "cuda:0" if self.device == "cuda" else self.device

    def render_chat(self, messages: Sequence[ChatMessage]) -> tuple[str, tuple[str, ...]]:
        return hf.render_chat(self._tokenizer, messages)

    def _loaded(self) -> bool:
        return self._model is not None

    def _generate(
        self, prompt: str, options: SamplingOptions, cancel: threading.Event, result: Generation
    ) -> Generator[bytes, None, None]:
        import torch

        torch.set_num_threads(self.threads)
        model, tokenizer = self._model, self._tokenizer
        context = self._context()
        ids = hf.encode(tokenizer, prompt, context)
        result.prompt_tokens = len(ids)
        limit = min(options.max_tokens, context - len(ids))
        device = self._torch_device()
        generator = torch.Generator(device=device)
        generator.manual_seed(options.seed if options.seed is not None else torch.seed())
        text = hf.TokenText(tokenizer)
        generated: list[int] = []
        result.finish_reason = FinishReason.LENGTH
        past: Any = None
        step = torch.tensor([ids], device=device)
        masking = self._masks
        matcher = masking.matcher(options.constraint) if masking is not None and options.constraint else None
        with torch.inference_mode():
            while len(generated) < limit:
                if cancel.is_set():
                    result.finish_reason = FinishReason.CANCELLED
                    return
                out = model(input_ids=step, use_cache=True, **{self._cache_arg: past})
                past = getattr(out, self._cache_arg)
                logits = out.logits[0, -1, :].float()
                if matcher is not None and masking is not None:
                    banned = torch.from_numpy(~masking.allowed(matcher)).to(logits.device)
                    logits = logits.masked_fill(banned, float("-inf"))
                raw = logits.cpu().numpy().copy() if options.logprobs is not None else None
                token = _sample(logits, options, (ids, generated), generator)
                if matcher is not None and not matcher.consume_token(token):
                    raise BackendError(f"the constraint failed: {matcher.get_error()}")
                if token in self._stop_ids:
                    result.finish_reason = FinishReason.STOP
                    break
                if raw is not None:
                    result.logprobs.append(probabilities.report(raw, token, options.logprobs or 0, self._piece))
                generated.append(token)
                result.completion_tokens = len(generated)
                step = torch.tensor([[token]], device=device)
                yield text.add(token).encode("utf-8")

    def _context(self) -> int:
        return int(getattr(self._model.config, "max_position_embeddings", 2048))

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
        self._model = self._tokenizer = None
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
