"""Audio in and out of workers: a speech worker's 16-bit mono samples written as they come in the format the
request asked for (WAV, bare PCM, MP3), so the first sound leaves before the last is made; and an upload to a
transcription worker read into samples at the rate its model hears."""

from __future__ import annotations

import importlib.util
import io
import struct
import wave
from collections.abc import AsyncIterator
from typing import Any

from rbee.api.audio import AudioFormat

STREAMED = 0xFFFFFFFF
"""A WAV size field that says "to the end of the stream": the length is not known when the header goes out."""


def wav_header(rate: int) -> bytes:
    """The 44-byte header of a 16-bit mono WAV file of unknown length (what readers of streamed WAV take)."""
    return (
        b"RIFF"
        + struct.pack("<I", STREAMED)
        + b"WAVEfmt "
        + struct.pack("<IHHIIHH", 16, 1, 1, rate, rate * 2, 2, 16)
        + b"data"
        + struct.pack("<I", STREAMED)
    )


def unserved(fmt: AudioFormat) -> str | None:
    """Why this worker cannot write `fmt`, or None."""
    if fmt is AudioFormat.MP3 and importlib.util.find_spec("lameenc") is None:
        return "mp3 needs rbee's speech extra on the hive (pip install 'rbee[speech]'); ask for wav or pcm"
    return None


async def encoded(fmt: AudioFormat, rate: int, samples: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """`samples` in `fmt`, chunk by chunk."""
    if fmt is AudioFormat.MP3:
        import lameenc

        encoder = lameenc.Encoder()
        encoder.set_bit_rate(64)
        encoder.set_in_sample_rate(rate)
        encoder.set_channels(1)
        encoder.set_quality(5)
        async for chunk in samples:
            made = encoder.encode(chunk)
            if made:
                yield bytes(made)
        yield bytes(encoder.flush())
        return
    if fmt is AudioFormat.WAV:
        yield wav_header(rate)
    odd = b""
    async for chunk in samples:  # whole samples only: a reader of bare PCM must never get half of one
        chunk = odd + chunk
        cut = len(chunk) - len(chunk) % 2
        odd = chunk[cut:]
        if cut:
            yield chunk[:cut]


class Undecodable(ValueError):
    """Uploaded bytes that are no audio this worker reads; the message says what it reads."""


def decode(data: bytes) -> tuple[Any, int]:
    """An uploaded file as mono float32 samples in [-1, 1] and their rate: WAV (8, 16 or 32-bit PCM) always;
    FLAC, OGG and MP3 where the `soundfile` package is installed."""
    import numpy as np

    if data[:4] == b"RIFF" and data[8:12] == b"WAVE":
        try:
            with wave.open(io.BytesIO(data)) as audio:
                width, channels, rate = audio.getsampwidth(), audio.getnchannels(), audio.getframerate()
                frames = audio.readframes(audio.getnframes())
        except (wave.Error, EOFError) as error:
            raise Undecodable(f"the WAV file cannot be read: {error}") from None
        kinds = {1: ("u1", 128.0, 128.0), 2: ("<i2", 0.0, 32768.0), 4: ("<i4", 0.0, 2147483648.0)}
        if width not in kinds:
            raise Undecodable(f"the WAV file has {8 * width}-bit samples; send 8, 16 or 32-bit PCM")
        kind, offset, scale = kinds[width]
        usable = len(frames) - len(frames) % (width * channels)
        samples = np.frombuffer(frames[:usable], dtype=kind).astype(np.float32)
        if offset:
            samples -= offset
        samples *= 1.0 / scale  # in place: each whole-array pass over a minute of audio costs milliseconds
        return (samples if channels == 1 else samples.reshape(-1, channels).mean(axis=1)), rate
    if importlib.util.find_spec("soundfile") is None:
        raise Undecodable("the file is not WAV; send WAV, or install soundfile on the hive for FLAC, OGG and MP3")
    import soundfile

    try:
        samples, rate = soundfile.read(io.BytesIO(data), dtype="float32", always_2d=True)
    except (RuntimeError, soundfile.LibsndfileError) as error:
        raise Undecodable(f"the file is no audio soundfile reads: {error}") from None
    return samples.mean(axis=1), int(rate)


def resampled(samples: Any, rate: int, wanted: int) -> Any:
    """`samples` at `wanted` samples a second (polyphase filtering, as Whisper's own loader does with ffmpeg)."""
    if rate == wanted:
        return samples
    from math import gcd

    from scipy.signal import resample_poly

    common = gcd(rate, wanted)
    return resample_poly(samples, wanted // common, rate // common).astype("float32")
