"""The gguf loop's logit bias and penalties (rbee/worker/backends/penalties.py), on a row of float32 logits: what
llama.cpp's penalties sampler computed, touching only the answer's own tokens."""

from __future__ import annotations

import numpy as np

from rbee.worker.backends.penalties import REPEAT_WINDOW, Penalties


def test_bias_comes_first_then_the_repetition_penalty_by_sign_then_frequency_and_presence() -> None:
    penalties = Penalties({3: 1.5}.items(), repeat=2.0, frequency=0.5, presence=0.25)
    for token in (1, 2, 2, 3):
        penalties.accept(token)
    row = np.array([1.0, 4.0, -4.0, 1.0, 7.0], dtype=np.float32)
    penalties.apply(row)
    # token 1: once, positive -> 4 / 2 - (0.5 + 0.25); token 2: twice, negative -> -4 * 2 - (1.0 + 0.25);
    # token 3: biased to 2.5, then 2.5 / 2 - 0.75; tokens 0 and 4 never occurred
    assert row.tolist() == [1.0, 1.25, -9.25, 0.5, 7.0]


def test_the_repetition_penalty_forgets_tokens_older_than_its_window_while_frequency_does_not() -> None:
    penalties = Penalties((), repeat=2.0, frequency=1.0, presence=0.0)
    penalties.accept(0)
    for _ in range(REPEAT_WINDOW):
        penalties.accept(1)
    row = np.array([4.0, 4.0], dtype=np.float32)
    penalties.apply(row)
    assert row.tolist() == [3.0, 4.0 / 2 - REPEAT_WINDOW]
    assert 0 not in penalties.recent_counts and penalties.answer_counts[0] == 1


def test_neutral_options_apply_nothing() -> None:
    assert not Penalties((), repeat=1.0, frequency=0.0, presence=0.0).active
    assert Penalties({5: -100.0}.items(), repeat=1.0, frequency=0.0, presence=0.0).active
