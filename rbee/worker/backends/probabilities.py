"""What the engines report about each token they chose: its log probability under the model and the most
likely alternatives at that step (OpenAI's logprobs and top_logprobs), from one step's logits."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from rbee.api import logprobs


def log_softmax(logits: Any) -> Any:
    """Log probabilities from one step's raw logits (a numpy vector): the model's own distribution, before
    temperature and truncation, which is what OpenAI reports. A constraint's mask (-inf) is part of it."""
    import numpy as np

    values = np.asarray(logits, dtype=np.float64)
    shifted = values - np.max(values)
    return shifted - np.log(np.sum(np.exp(shifted)))


def top(values: Any, count: int) -> list[tuple[int, float]]:
    """The `count` most likely token ids of one step's log probabilities, most likely first."""
    import numpy as np

    count = min(count, values.shape[-1])
    if count <= 0:
        return []
    best = np.argpartition(-values, count - 1)[:count]
    best = best[np.argsort(-values[best], kind="stable")]
    return [(int(token), float(values[token])) for token in best]


def report(logits: Any, chosen: int, count: int, piece: Callable[[int], bytes]) -> logprobs.Entry:
    """The entry for `chosen`, sampled from `logits`, with `count` alternatives; `piece` gives a token's bytes."""
    values = log_softmax(logits)
    alternatives = [(piece(token), value) for token, value in top(values, count)]
    return logprobs.entry(piece(chosen), float(values[chosen]), alternatives)
