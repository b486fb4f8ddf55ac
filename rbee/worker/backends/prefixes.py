"""The torch batch loop's prefix cache: the keys and values of recent prompts, kept apart from the row cache (whose
rows are overwritten as soon as their sequence leaves), so that a prompt beginning with one of them (a shared
system prompt, the earlier turns of a chat) copies that beginning into its row and evaluates only the rest.

Keys are kept after their rotary position was applied: a token at the same position of another prompt has the
same key, so a copied beginning is what evaluating it again would give. Bounded in bytes, least recently used
first out.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

REUSE_MIN = 32
"""Tokens a prompt must share with a kept one (torch) or a slot's cache (gguf) before reusing them is worth it."""
BUDGET = 256 << 20
"""Bytes of kept prompts (a 1,000-token prompt of SmolLM2 in float32 is ~46 MB)."""


def shared(first: Sequence[int], second: Sequence[int]) -> int:
    """How many tokens two prompts begin with alike (what a kept prompt, or a gguf slot's cache, holds of another)."""
    count = 0
    for a, b in zip(first, second, strict=False):
        if a != b:
            break
        count += 1
    return count


class Prefixes:
    def __init__(self, budget: int = BUDGET) -> None:
        self.budget = budget
        self.held = 0
        self._kept: OrderedDict[tuple[int, ...], tuple[list[Any], list[Any], int]] = OrderedDict()
        """Prompt tokens -> (keys per layer, values per layer, bytes); each tensor [heads, tokens, dim]."""

    def __len__(self) -> int:
        return len(self._kept)

    def find(self, ids: list[int]) -> tuple[int, list[Any], list[Any]]:
        """The longest kept beginning of `ids` (at most all but its last token, whose logits the prompt needs),
        as (tokens, keys, values); (0, [], []) when none reaches REUSE_MIN."""
        best, found = 0, None
        for prompt in self._kept:
            length = min(shared(prompt, ids), len(ids) - 1)
            if length > best:
                best, found = length, prompt
        if found is None or best < REUSE_MIN:
            return 0, [], []
        self._kept.move_to_end(found)
        keys, values, _ = self._kept[found]
        return best, [tensor[:, :best] for tensor in keys], [tensor[:, :best] for tensor in values]

    def keep(self, ids: list[int], keys: list[Any], values: list[Any]) -> None:
        """Keep a prompt's keys and values (copies: the row they came from will be written over)."""
        if len(ids) < REUSE_MIN:
            return
        prompt = tuple(ids)
        size = sum(tensor.numel() * tensor.element_size() for tensor in (*keys, *values))
        if size > self.budget:
            return
        if prompt in self._kept:
            self._kept.move_to_end(prompt)
            return
        while self._kept and self.held + size > self.budget:
            _, (_, _, freed) = self._kept.popitem(last=False)
            self.held -= freed
        self._kept[prompt] = ([tensor.clone() for tensor in keys], [tensor.clone() for tensor in values], size)
        self.held += size

    def clear(self) -> None:
        self._kept.clear()
        self.held = 0
