"""The audio workers' requests, queen -> worker: speech (text in, audio streamed out in `format`) and
transcription (an uploaded recording in, its text out, answered whole)."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

MAX_AUDIO = 25 << 20
"""The largest upload (OpenAI's own limit)."""
FRAMED = "application/x-rbee-recording"
"""The content type of a transcription worker's body: its request as one line of JSON, a newline, then the
recording's bytes as uploaded. Sent as base64 inside JSON it was a third larger and cost ~30 ms per 2 MB between
encoding and decoding: a fifth of a tiny Whisper's whole answer (bench/modalities.py)."""


class AudioFormat(StrEnum):
    WAV = "wav"
    """16-bit mono PCM in a WAV file whose sizes say "to the end of the stream" (it is written as it is made)."""
    PCM = "pcm"
    """The bare 16-bit little-endian mono samples (OpenAI's pcm; the rate is the engine's, in X-Sample-Rate)."""
    MP3 = "mp3"


AUDIO_TYPES = {AudioFormat.WAV: "audio/wav", AudioFormat.PCM: "audio/pcm", AudioFormat.MP3: "audio/mpeg"}


class SpeakRequest(BaseModel):
    """The body of a speech worker's `POST /v1/execute`; it answers the audio as it is made, in `format`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    request_id: Annotated[str, Field(min_length=1, max_length=128)] = "anonymous"
    input: Annotated[str, Field(min_length=1, max_length=4096)]
    voice: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_+-]{0,63}$")]
    """The engine's own voice name (eSpeak NG: `en-us`, `de`, `en+f3`); the queen maps OpenAI's names to them."""
    format: AudioFormat = AudioFormat.WAV
    speed: Annotated[float, Field(ge=0.25, le=4.0)] = 1.0


class TranscribeRequest(BaseModel):
    """A transcription worker's `POST /v1/execute`: this, framed with the recording (`framed`); it answers
    `{"text", "language", "duration", "segments": [{"start", "end", "text", "tokens"}]}` (a segment per 30-second
    window of the audio)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    request_id: Annotated[str, Field(min_length=1, max_length=128)] = "anonymous"
    language: Annotated[str, Field(pattern=r"^[a-z]{2,3}$")] | None = None
    """ISO-639-1 (`en`); None: the model says which it hears."""
    task: Literal["transcribe", "translate"] = "transcribe"
    prompt: Annotated[str, Field(max_length=2000)] | None = None
    temperature: Annotated[float, Field(ge=0.0, le=1.0)] = 0.0


def framed(request: TranscribeRequest, recording: bytes) -> bytes:
    """The worker's body: the request's JSON on one line (JSON escapes every newline it holds), then the bytes."""
    return request.model_dump_json().encode() + b"\n" + recording


def unframed(body: bytes) -> tuple[TranscribeRequest, bytes]:
    """The request and the recording of a framed body; ValueError (pydantic's ValidationError among them) when it
    is not one, or the recording is empty or past MAX_AUDIO."""
    head, newline, recording = body.partition(b"\n")
    if not newline:
        raise ValueError("the body is not a framed recording: its request's JSON, a newline, then the audio")
    if not recording or len(recording) > MAX_AUDIO:
        raise ValueError(f"the recording must hold 1 byte to {MAX_AUDIO >> 20} MB")
    return TranscribeRequest.model_validate_json(head), recording
