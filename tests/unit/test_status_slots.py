"""`rbee status` says how many requests each worker serves at once, and that a backend which cannot batch serves
one at a time."""

from __future__ import annotations

from rbee.keeper import render


def test_batching_backends_show_their_slots_and_the_others_say_one_at_a_time() -> None:
    assert render.slots({"backend": "gguf", "slots": 16}) == "16"
    assert render.slots({"backend": "torch", "slots": 4}) == "4"
    assert render.slots({"backend": "mlx", "slots": 4}) == "4"
    assert render.slots({"backend": "espeak", "slots": 1}) == "1, one at a time"
    assert render.slots({"backend": "ctransformers"}) == "1, one at a time"
