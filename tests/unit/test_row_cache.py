"""The torch batch loop's KV cache (rbee/worker/backends/rows.py) with small made-up keys: where a prompt goes,
what each row's mask lets it see, and that shifting, growing and moving rows keep every row's columns."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from rbee.worker.backends import rows  # noqa: E402


def keys(values: list[float]) -> object:
    """Keys of shape (1 row, 1 head, len(values) columns, 1 dim)."""
    return torch.tensor(values, dtype=torch.float32).reshape(1, 1, len(values), 1)


def prefill(cache: rows.RowCache, row: int, values: list[float], starts: list[int]) -> int:
    at = cache.prefill(row, len(values), starts)
    cache.update(keys(values), keys(values), 0)
    return at


def step(cache: rows.RowCache, values: list[float], starts: list[int]) -> None:
    cache.step(len(values), starts)
    column = torch.tensor(values, dtype=torch.float32).reshape(len(values), 1, 1, 1)
    cache.update(column, column, 0)


def seen(cache: rows.RowCache, row: int) -> list[float]:
    """The keys row `row` attends over at the last step."""
    visible = cache.valid[row, : cache.t]
    return cache.keys[0][row, 0, : cache.t, 0][visible].tolist()


def test_a_longer_prompt_moves_the_column_on_and_the_rows_already_there_skip_the_gap() -> None:
    cache = rows.RowCache(2, 64)
    assert prefill(cache, 0, [1, 2], []) == 0
    assert prefill(cache, 1, [10, 11, 12, 13], [0]) == 0  # longer than t=2: t moves to 4
    step(cache, [3, 14], [0, 0])
    assert seen(cache, 0) == [1, 2, 3] and seen(cache, 1) == [10, 11, 12, 13, 14]
    mask = cache.mask(2, torch.float32)
    assert mask.shape == (2, 1, 1, 5) and bool((mask[0, 0, 0, 2:4] < 0).all()) and mask[0, 0, 0, 4] == 0


def test_a_short_prompt_joins_before_the_column_and_nobody_moves() -> None:
    cache = rows.RowCache(2, 64)
    prefill(cache, 0, [1, 2, 3, 4], [])
    assert prefill(cache, 1, [7, 8], [0]) == 2
    step(cache, [5, 9], [0, 2])
    assert seen(cache, 0) == [1, 2, 3, 4, 5] and seen(cache, 1) == [7, 8, 9]


def test_out_of_columns_it_shifts_past_the_oldest_start_before_it_grows(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(rows, "FIRST_CAPACITY", 4)
    cache = rows.RowCache(2, 64)
    prefill(cache, 0, [1, 2], [])
    prefill(cache, 1, [7], [0])  # row 1 starts at column 1
    cache.move(1, 0)  # row 0's sequence left: row 1's takes its place, the only one, starting at column 1
    starts = [1]
    step(cache, [8], starts)  # t = 3
    step(cache, [9], starts)  # t = 4 = capacity
    step(cache, [10], starts)  # no room: shift left by 1 instead of growing
    assert starts == [0] and cache.capacity == 4 and cache.t == 4
    assert seen(cache, 0) == [7, 8, 9, 10]
    step(cache, [11], starts)  # the oldest start is 0 now: it grows
    assert cache.capacity == 8 and seen(cache, 0) == [7, 8, 9, 10, 11]


def test_a_row_moved_into_a_freed_one_keeps_its_columns() -> None:
    cache = rows.RowCache(3, 64)
    prefill(cache, 0, [1, 2], [])
    prefill(cache, 1, [3, 4, 5], [0])
    cache.move(1, 0)
    assert seen(cache, 0) == [3, 4, 5]


def test_prefixes_give_the_longest_kept_beginning_and_forget_the_least_recent_past_their_budget() -> None:
    import torch

    from rbee.worker.backends import prefixes

    def kv(tokens: int) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        return [torch.full((2, tokens, 4), float(tokens))], [torch.zeros((2, tokens, 4))]

    per_token = 2 * 2 * 4 * 4  # keys and values, 2 heads of 4 float32s
    kept = prefixes.Prefixes(budget=100 * per_token)
    base = list(range(1000, 1040))
    kept.keep(base[:10], *kv(10))  # too short to be worth keeping
    assert len(kept) == 0
    kept.keep(base, *kv(40))
    kept.keep(base[:35], *kv(35))
    found, keys, _ = kept.find([*base, 7, 8])
    assert found == 40 and float(keys[0][0, 0, 0]) == 40.0 and keys[0].shape[1] == 40
    assert kept.find([*base[:36], 9])[1][0].shape[1] == 36  # as much of a kept prompt as is shared
    assert kept.find(base)[0] == 39  # never the whole prompt: its last token's logits are needed
    assert kept.find([*base[:20], 1, 2, 3])[0] == 0  # 20 shared tokens: fewer than REUSE_MIN
    kept.find([*base[:35], 5])  # the 35-token prompt is now the most recent
    kept.keep(list(range(50)), *kv(50))  # 125 tokens' worth over a budget of 100: the 40-token one goes
    assert kept.find([*base, 7])[0] == 35 and kept.held == 85 * per_token
