"""Logit bias and the repetition, frequency and presence penalties, applied in place to one step's row of logits
before llama.cpp's sampler chain (top-k, top-p, temperature, the seeded draw) sees it.

llama.cpp's penalties sampler does the same arithmetic, but looks every candidate of the vocabulary up in its
table of recent tokens: 49,152 lookups a token for SmolLM2, ~0.3 ms of the ~0.4 ms a sample cost here, paid once
per sequence per batch step (8 streams: 2.5 ms of a 31 ms step). Here only the answer's own tokens are touched.
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Iterable
from typing import Any

from rbee.api.wire import SamplingOptions

REPEAT_WINDOW = 64
"""The repetition penalty looks at the answer's last this many tokens (llama.cpp's penalty_last_n)."""


class Penalties:
    """What one answer's sampling adds to the model's logits: OpenAI's logit_bias (added first), the repetition
    penalty over the last REPEAT_WINDOW tokens (a logit above zero divided by it, one below multiplied), and
    OpenAI's frequency and presence penalties over the whole answer (subtracted per occurrence and once)."""

    def __init__(self, bias: Iterable[tuple[int, float]], repeat: float, frequency: float, presence: float) -> None:
        self.bias = [(token, value) for token, value in bias]
        self.repeat, self.frequency, self.presence = repeat, frequency, presence
        self.recent: deque[int] = deque(maxlen=REPEAT_WINDOW)
        self.recent_counts: Counter[int] = Counter()
        self.answer_counts: Counter[int] = Counter()

    @property
    def active(self) -> bool:
        return bool(self.bias) or self.repeat != 1.0 or bool(self.frequency or self.presence)

    def apply(self, logits: Any) -> None:
        """Change a row of float32 logits (a numpy view of llama.cpp's buffer) in place."""
        import numpy as np

        for token, value in self.bias:
            logits[token] += np.float32(value)
        if self.repeat != 1.0:
            repeat = np.float32(self.repeat)
            for token in self.recent_counts:
                logit = logits[token]
                logits[token] = logit * repeat if logit <= 0 else logit / repeat
        if self.frequency or self.presence:
            for token, count in self.answer_counts.items():
                logits[token] -= np.float32(count * self.frequency + self.presence)

    def accept(self, token: int) -> None:
        """The token the answer took: it counts from the next step on."""
        if len(self.recent) == REPEAT_WINDOW:
            oldest = self.recent[0]
            self.recent_counts[oldest] -= 1
            if not self.recent_counts[oldest]:
                del self.recent_counts[oldest]
        self.recent.append(token)
        self.recent_counts[token] += 1
        self.answer_counts[token] += 1


def llama_chain(options: SamplingOptions) -> Any:
    """llama.cpp's sampler chain for what comes after the bias and penalties: greedy at temperature 0, else
    top-k, top-p, temperature and the seeded draw."""
    import llama_cpp
    from llama_cpp import _internals

    sampler = _internals.LlamaSampler()
    if options.temperature == 0:
        sampler.add_greedy()
        return sampler
    if options.top_k > 0:
        sampler.add_top_k(options.top_k)
    sampler.add_top_p(options.top_p, 1)
    sampler.add_temp(options.temperature)
    sampler.add_dist(options.seed if options.seed is not None else llama_cpp.LLAMA_DEFAULT_SEED)
    return sampler
