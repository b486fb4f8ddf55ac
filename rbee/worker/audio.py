"""Audio as a speech worker sends it: 16-bit mono samples from its engine, written as they come in the format the
request asked for (WAV, bare PCM, MP3), so the first sound leaves before the last is made."""

from __future__ import annotations

import importlib.util
import struct
from collections.abc import AsyncIterator

from rbee.api.wire import AudioFormat

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
