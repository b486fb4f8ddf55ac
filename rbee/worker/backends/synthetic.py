"""A synthetic engine: a BENCHMARK LOAD that loads no weights and streams tokens at a fixed rate, several
requests at once. It runs in a real worker process started by a real hive, so a benchmark or a capacity test of
the fleet (bench/chaos.py, a home lab sizing its queen) exercises everything rbee does except the model's
arithmetic. `backend: auto` never picks it; a worker group names it (`backend: synthetic`).

Each token is " tok", or the next word of what follows "say:" in the prompt (then the answer ends when the
words do); a request ends at max_tokens, at a stop string, or when it is cancelled.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from itertools import cycle

from rbee.api.wire import ChatMessage, FinishReason, SamplingOptions
from rbee.worker.backends import BackendError, Generation, text_pieces

RATE = 40.0
"""Tokens a second per request: about a 7B model's decode speed on one consumer GPU."""
LOAD_SECONDS = "RBEE_SYNTHETIC_LOAD_SECONDS"
"""An environment variable (of the hive, hence its workers): seconds each load takes, to rehearse a big model's
load (cold starts under load, the hive's load timeout). Unset: the load is instant."""
SLOTS = 8


class SyntheticBackend:
    name = "synthetic"
    slots = SLOTS

    def __init__(self, model_path: str, *, device: str = "cpu", threads: int | None = None) -> None:
        self.model_path = model_path
        self.device = "cpu"
        self._loaded = False

    def load(self, progress: Callable[[float], None]) -> None:
        seconds = float(os.environ.get(LOAD_SECONDS) or 0)
        steps = max(1, int(seconds * 4))
        for step in range(1, steps + 1):
            time.sleep(seconds / steps)
            progress(step / steps)
        self._loaded = True

    def render_chat(self, messages: Sequence[ChatMessage]) -> tuple[str, tuple[str, ...]]:
        return "\n".join(f"{message.role}: {message.content or ''}" for message in messages), ()

    def generate(
        self, prompt: str, options: SamplingOptions, cancel: threading.Event, result: Generation
    ) -> Iterator[str]:
        if not self._loaded:
            raise BackendError("the model is not loaded")
        result.prompt_tokens = len(prompt.split())
        _, said, words = prompt.rpartition("say:")
        pieces = iter(f" {word}" for word in words.split()) if said else cycle([" tok"])
        result.finish_reason = FinishReason.LENGTH

        def tokens() -> Iterator[bytes]:
            while result.completion_tokens < options.max_tokens:
                if cancel.wait(1.0 / RATE):
                    result.finish_reason = FinishReason.CANCELLED
                    return
                piece = next(pieces, None)
                if piece is None:
                    result.finish_reason = FinishReason.STOP
                    return
                result.completion_tokens += 1
                yield piece.encode()

        yield from text_pieces(tokens(), options.stop, result)

    def unload(self) -> None:
        self._loaded = False


ENGINE = SyntheticBackend
"""What `backends.create` builds for this backend."""
