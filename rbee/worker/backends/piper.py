"""Speech from Piper voices (piper-tts: VITS models in ONNX on onnxruntime, phonemes from its own eSpeak NG):
neural speech on a CPU, measured here at about 16x faster than real time on two cores (bench/modalities.py).

The model is one `voice.onnx` with its `voice.onnx.json` (sample rate, phoneme table, speakers), or a folder
holding the pair. A request is spoken a sentence at a time in a thread of its own, each sentence's samples handed
to the event loop as soon as they are made; a request that ends early (its client left, its worker stops) stops
between sentences.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from rbee.worker.backends import BackendError
from rbee.worker.backends.espeak import OPENAI_VOICES

SPEED = (0.25, 4.0)
"""OpenAI's bounds on speed; Piper's length scale is its inverse."""


def voice_files(path: Path) -> tuple[Path, Path]:
    """The voice's model and its config: `path` itself (a .onnx file) or the one .onnx in the folder `path`."""
    voices = [path] if path.is_file() else sorted(path.glob("*.onnx"))
    if len(voices) != 1:
        raise BackendError(f"{path} holds {len(voices)} .onnx voices; a Piper model is one voice")
    config = voices[0].with_name(voices[0].name + ".json")
    if not config.is_file():
        raise BackendError(f"the Piper voice {voices[0].name} has no {config.name} beside it")
    return voices[0], config


class Piper:
    name = "piper"
    device = "cpu"
    kind = "speech"

    def __init__(self, model_path: str, device: str = "cpu", threads: int | None = None) -> None:
        self.model, self.config = Path(model_path), Path(model_path)
        self.threads = threads
        self.rate = 22050
        self.speakers: dict[str, int] = {}
        """A multi-speaker voice's speaker names and ids (empty: one speaker)."""
        self._voice: Any = None

    def load(self, progress: Callable[[float], None]) -> None:
        from piper import PiperVoice
        from piper.config import PiperConfig

        self.model, self.config = voice_files(self.model)
        try:
            settings = json.loads(self.config.read_text())
            config = PiperConfig.from_dict(settings)
        except (ValueError, KeyError, TypeError) as error:
            raise BackendError(f"{self.config.name} is not a Piper voice config: {error}") from None
        self.rate = config.sample_rate
        self.speakers = {str(name): int(number) for name, number in settings.get("speaker_id_map", {}).items()}
        progress(0.2)
        self._voice = PiperVoice(config=config, session=_session(self.model, self.threads))
        progress(1.0)

    def unload(self) -> None:
        self._voice = None

    def voice(self, name: str) -> str | None:
        """A speaker of this voice by its own name; OpenAI's voice names each a speaker (all the same speaker for
        a voice that has one)."""
        if name in self.speakers:
            return name
        if name in OPENAI_VOICES:
            if not self.speakers:
                return name
            names = sorted(self.speakers, key=self.speakers.__getitem__)
            return names[list(OPENAI_VOICES).index(name) % len(names)]
        return None

    def voices(self) -> str:
        own = f"its speakers {', '.join(sorted(self.speakers)[:12])}, or " if self.speakers else ""
        return f"{own}OpenAI's names ({', '.join(OPENAI_VOICES)}): this Piper voice ({self.model.stem}) speaks them all"

    async def speak(self, text: str, voice: str, speed: float) -> AsyncIterator[bytes]:
        """The speech's 16-bit mono samples at `rate`, a sentence at a time as each is made."""
        from piper import SynthesisConfig

        if self._voice is None:
            raise BackendError("the voice is not loaded")
        settings = SynthesisConfig(
            speaker_id=self.speakers.get(voice), length_scale=1.0 / min(max(speed, SPEED[0]), SPEED[1])
        )
        loop = asyncio.get_running_loop()
        spoken: asyncio.Queue[bytes | BaseException | None] = asyncio.Queue()
        stop = threading.Event()

        def produce() -> None:
            try:
                for chunk in self._voice.synthesize(text, syn_config=settings):
                    if stop.is_set():
                        return
                    loop.call_soon_threadsafe(spoken.put_nowait, chunk.audio_int16_bytes)
                loop.call_soon_threadsafe(spoken.put_nowait, None)
            except Exception as error:  # the stream must end with the reason, not hang
                loop.call_soon_threadsafe(spoken.put_nowait, BackendError(f"piper failed: {error}"))

        threading.Thread(target=produce, name="piper", daemon=True).start()
        try:
            while True:
                item = await spoken.get()
                if item is None:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            stop.set()  # a request that ended early: the thread stops after its sentence


def _session(model: Path, threads: int | None) -> Any:
    """The voice's ONNX session on the CPU; onnxruntime takes every core unless hive.yaml's workers[].threads
    bounds it."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads or 0
    options.inter_op_num_threads = 1
    return onnxruntime.InferenceSession(str(model), sess_options=options, providers=["CPUExecutionProvider"])


ENGINE = Piper
