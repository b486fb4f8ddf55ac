"""The KV cache of torch's batch loop: one row per slot, all rows written at one shared column each step.

A transformers model is handed this object as its cache; each attention layer calls `update` with the keys and
values of the tokens it is computing and attends over what `update` returns, under the 4D mask the loop passes.
Two kinds of call:

- a *prefill* evaluates one sequence's prompt alone, into its row at columns [at, at + length);
- a *step* evaluates the next token of rows 0..n-1 at once, all into column `t`, and every row attends over the
  columns it wrote (`valid`; the mask hides the rest: another sequence's old columns, or nothing yet).

A token's rotary position is applied before the cache sees it, so a sequence's columns need not start at 0, nor
follow each other: the prompt of a sequence that joins at column t goes into [t - length, t) of its free row, and
nobody else moves; a prompt longer than t moves t on, and the rows already there skip the columns in between.
Active sequences always hold rows 0..n-1 (one that leaves gets the last row moved into its place), so a step
computes no row for nobody. When the columns run out, everyone shifts left past the oldest sequence's start, and
the tensors grow (doubling, up to twice the context) only when that is not enough.
"""

from __future__ import annotations

from typing import Any

FIRST_CAPACITY = 256
"""Columns the cache starts with; it doubles when that is not enough."""


class RowCache:
    def __init__(self, rows: int, limit: int, device: str = "cpu") -> None:
        import torch

        self.rows, self.limit = rows, limit
        """Slots, and the most columns it may grow to (twice the context: see `room`)."""
        self.keys: list[Any] = []
        self.values: list[Any] = []
        self.valid = torch.zeros((rows, 0), dtype=torch.bool, device=device)
        """Which columns of each row its sequence wrote; an active row's are all before t."""
        self.capacity = 0
        self.t = 0
        """The next column every step writes."""
        self._call: tuple[str, int, int, int] = ("step", 0, 0, 0)
        self._reused: tuple[int, list[Any], list[Any]] = (0, [], [])
        """A prefill's kept beginning: its tokens, and its keys and values per layer (prefixes.py)."""

    # -- what the model calls ----------------------------------------------------------------------------------

    def update(self, key_states: Any, value_states: Any, layer_idx: int, *args: Any, **kwargs: Any) -> Any:
        if layer_idx >= len(self.keys):
            self._allocate_layer(key_states)
        keys, values = self.keys[layer_idx], self.values[layer_idx]
        kind, first, second, third = self._call
        if kind == "prefill":
            row, at, length = first, second, third
            reused, kept_keys, kept_values = self._reused
            if reused:  # the kept beginning goes in first, then what this call computed after it
                keys[row, :, at : at + reused] = kept_keys[layer_idx]
                values[row, :, at : at + reused] = kept_values[layer_idx]
            keys[row, :, at + reused : at + length] = key_states[0]
            values[row, :, at + reused : at + length] = value_states[0]
            return keys[row : row + 1, :, at : at + length], values[row : row + 1, :, at : at + length]
        count, column = first, second
        keys[:count, :, column] = key_states[:, :, 0]
        values[:count, :, column] = value_states[:, :, 0]
        return keys[:count, :, : column + 1], values[:count, :, : column + 1]

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.t

    # -- what the batch loop calls -----------------------------------------------------------------------------

    def prefill(
        self, row: int, length: int, starts: list[int], reused: tuple[int, list[Any], list[Any]] = (0, [], [])
    ) -> int:
        """Ready a prompt of `length` tokens for `row`; the column it starts at. `starts` are the active rows'
        first columns (they move when the cache shifts). With `reused` (a kept beginning of the prompt: its
        tokens, keys and values per layer), the model computes only the tokens after it."""
        self.room(length, starts)
        at = max(self.t, length) - length
        self.t = max(self.t, length)
        self.valid[row] = False
        self.valid[row, at : at + length] = True
        self._call = ("prefill", row, at, length)
        self._reused = reused
        return at

    def columns(self, row: int, at: int, length: int) -> tuple[list[Any], list[Any]]:
        """Views of row `row`'s keys and values at columns [at, at + length), per layer: [heads, length, dim]."""
        return (
            [tensor[row, :, at : at + length] for tensor in self.keys],
            [tensor[row, :, at : at + length] for tensor in self.values],
        )

    def step(self, count: int, starts: list[int]) -> int:
        """Ready the next token of rows 0..count-1; the column they go to."""
        self.room(1, starts)
        column = self.t
        self.valid[:count, column] = True
        self._call = ("step", count, column, 0)
        self._reused = (0, [], [])
        self.t += 1
        return column

    def mask(self, count: int, dtype: Any) -> Any:
        """The attention mask of a step of rows 0..count-1 (after `step`): 0 where a row sees, -inf elsewhere."""
        import torch

        seen = self.valid[:count, : self.t]
        blank = torch.zeros(seen.shape, dtype=dtype, device=seen.device)
        return blank.masked_fill_(~seen, torch.finfo(dtype).min)[:, None, None, :]

    def room(self, needed: int, starts: list[int]) -> None:
        """Make `needed` free columns at and after t: shift left past the oldest start, else grow. A sequence
        holds at most `context` columns, so after the shift t <= context and a prompt of <= context fits in
        twice the context."""
        if self.t + needed <= self.capacity:
            return
        oldest = min(starts) if starts else self.t
        if oldest > 0:
            for tensor in (*self.keys, *self.values):
                tensor[:, :, : self.t - oldest] = tensor[:, :, oldest : self.t].clone()
            self.valid[:, : self.t - oldest] = self.valid[:, oldest : self.t].clone()
            self.valid[:, self.t - oldest :] = False
            self.t -= oldest
            starts[:] = [start - oldest for start in starts]
        if self.t + needed > self.capacity:
            wanted = max(self.capacity * 2, FIRST_CAPACITY, self.t + needed)
            self._resize(min(wanted, max(self.limit, self.t + needed)))

    def move(self, source: int, target: int) -> None:
        """Row `source`'s columns into row `target` (a sequence takes the row of one that left)."""
        for tensor in (*self.keys, *self.values):
            tensor[target, :, : self.t] = tensor[source, :, : self.t]
        self.valid[target] = self.valid[source]

    def reset(self) -> None:
        """Nobody is active: the next prompt may start at column 0."""
        self.t = 0
        self.valid[:] = False

    # -- storage -----------------------------------------------------------------------------------------------

    def _allocate_layer(self, like: Any) -> None:
        import torch

        shape = (self.rows, like.shape[1], max(self.capacity, FIRST_CAPACITY), like.shape[3])
        self.capacity = shape[2]
        self.keys.append(torch.zeros(shape, dtype=like.dtype, device=like.device))
        self.values.append(torch.zeros(shape, dtype=like.dtype, device=like.device))

    def _resize(self, capacity: int) -> None:
        import torch

        for tensors in (self.keys, self.values):
            for index, old in enumerate(tensors):
                grown = torch.zeros(
                    (old.shape[0], old.shape[1], capacity, old.shape[3]), dtype=old.dtype, device=old.device
                )
                grown[:, :, : self.t] = old[:, :, : self.t]
                tensors[index] = grown
        valid = torch.zeros((self.rows, capacity), dtype=torch.bool, device=self.valid.device)
        valid[:, : self.t] = self.valid[:, : self.t]
        self.valid, self.capacity = valid, capacity
