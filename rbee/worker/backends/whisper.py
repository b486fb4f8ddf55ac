"""Transcription and translation with Whisper models (a Hugging Face folder: the model, its tokenizer and feature
extractor) on transformers, on CUDA or the CPU.

Audio is heard as Whisper hears it: 16 kHz mono, in 30-second windows, each window one segment of the answer
(its start and end, its text and tokens), all windows of a request decoded in one batch.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from typing import Any

from rbee.worker.audio import resampled
from rbee.worker.backends import BackendError

RATE = 16000
WINDOW = 30
"""Seconds Whisper hears at once."""


class LanguageRefused(BackendError):
    """A language the model was not trained on: the client's 400."""


class Whisper:
    name = "whisper"
    kind = "transcription"

    def __init__(self, model_path: str, device: str = "cpu", threads: int | None = None) -> None:
        self.path = model_path
        self.device = "cpu" if device == "auto" else device
        self.threads = threads or max(1, os.cpu_count() or 1)
        self._model: Any = None
        self._processor: Any = None
        self._lock = threading.Lock()

    def load(self, progress: Callable[[float], None]) -> None:
        import torch
        from transformers import WhisperForConditionalGeneration, WhisperProcessor

        torch.set_num_threads(self.threads)
        self._processor = WhisperProcessor.from_pretrained(self.path)
        progress(0.3)
        model = WhisperForConditionalGeneration.from_pretrained(self.path, use_safetensors=True)
        self._model = model.to(self.device).eval()
        progress(1.0)

    def unload(self) -> None:
        self._model = self._processor = None

    def languages(self) -> list[str]:
        """The languages the model knows (`en`, `de` …), from its generation config."""
        table = getattr(self._model.generation_config, "lang_to_id", None) or {}
        return sorted(token.strip("<|>") for token in table)

    def check_language(self, language: str | None) -> None:
        known = self.languages()
        if language is not None and language not in known:
            raise LanguageRefused(f"the model knows no language {language}; it knows {', '.join(known) or 'none'}")

    def transcribe(
        self, samples: Any, rate: int, language: str | None, task: str, prompt: str | None, temperature: float
    ) -> dict[str, Any]:
        """`samples` (mono float32 at `rate`) as text: the whole and each 30-second window's."""
        import torch

        self.check_language(language)
        torch.set_num_threads(self.threads)  # in the generating thread itself, as for text (FACTS.md)
        heard = resampled(samples, rate, RATE)
        windows = [heard[start : start + WINDOW * RATE] for start in range(0, max(len(heard), 1), WINDOW * RATE)]
        features = self._processor(windows, sampling_rate=RATE, return_tensors="pt").input_features
        model = self._model
        room = model.config.max_target_positions
        options: dict[str, Any] = {"task": task}
        if language is not None:
            options["language"] = language
        if prompt:  # its last words, in at most half the decoder's positions (Whisper's own rule: 223 of 448)
            ids = self._processor.get_prompt_ids(prompt)
            kept = ids[-(room // 2 - 1) :]
            options["prompt_ids"] = torch.tensor([ids[0], *kept[1:]] if kept[0] != ids[0] else kept)
            room -= len(options["prompt_ids"])
        options["max_new_tokens"] = max(1, min(440, room - 5))  # its start, language, task and no-timestamps
        if temperature > 0:
            options.update(do_sample=True, temperature=temperature)
        with self._lock, torch.inference_mode():
            tokens = model.generate(features.to(model.device, model.dtype), **options)
        segments = []
        for index, row in enumerate(tokens.tolist()):
            text = self._processor.decode(row, skip_special_tokens=True).strip()
            start = index * WINDOW
            segments.append(
                {
                    "start": float(start),
                    "end": min(float(start + WINDOW), len(heard) / RATE),
                    "text": text,
                    "tokens": row,
                }
            )
        return {
            "text": " ".join(segment["text"] for segment in segments if segment["text"]),
            "language": language,
            "duration": len(heard) / RATE,
            "segments": segments,
        }


ENGINE = Whisper
