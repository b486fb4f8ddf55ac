"""The transcription request and response bodies (pure): OpenAI's `POST /v1/audio/transcriptions` and
`/translations` (a multipart upload: file, model, language, prompt, response_format, temperature), what the
openai clients and Open WebUI send, and each `response_format`'s answer (json, text, verbose_json, srt, vtt)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from rbee.api.audio import MAX_AUDIO, TranscribeRequest
from rbee.api.wire import Unsupported

FORMATS = ("json", "text", "verbose_json", "srt", "vtt")
FIELDS = frozenset({"file", "model", "language", "prompt", "response_format", "temperature"})
NOT_YET = {
    "timestamp_granularities[]": "word timestamps are not served; segments come per 30-second window",
    "timestamp_granularities": "word timestamps are not served; segments come per 30-second window",
    "stream": "transcripts are answered whole",
    "chunking_strategy": "audio is heard in Whisper's own 30-second windows",
    "include[]": "logprobs of transcripts are not served",
}
NEUTRAL = {"timestamp_granularities[]": ("segment",), "timestamp_granularities": ("segment",), "stream": ("false",)}


class TranscriptionForm(BaseModel):
    """The upload's fields other than its file."""

    model_config = ConfigDict(extra="forbid")

    model: Annotated[str, Field(min_length=1)]
    language: str | None = None
    prompt: str | None = None
    response_format: Literal["json", "text", "verbose_json", "srt", "vtt"] = "json"
    temperature: Annotated[float, Field(ge=0.0, le=1.0)] = 0.0


def form_of(fields: Mapping[str, str]) -> TranscriptionForm:
    """The text fields of the upload; Unsupported for one rbee does not serve (its neutral value passes)."""
    for name, value in fields.items():
        if name in FIELDS:
            continue
        if value in NEUTRAL.get(name, ()):
            continue
        raise Unsupported(name, f"{name}: {NOT_YET.get(name, 'rbee does not know this field')}; remove it")
    return TranscriptionForm.model_validate({name: value for name, value in fields.items() if name in FIELDS})


def to_worker(request_id: str, form: TranscriptionForm, audio: bytes, task: str) -> TranscribeRequest:
    """The worker's request for `audio` (which goes to it beside the request, audio.framed)."""
    if not audio:
        raise Unsupported("file", "the file is empty; upload the audio to transcribe")
    if len(audio) > MAX_AUDIO:
        raise Unsupported("file", f"the file is larger than {MAX_AUDIO >> 20} MB; send a shorter recording")
    return TranscribeRequest(
        request_id=request_id,
        language=form.language or None,
        task="translate" if task == "translate" else "transcribe",
        prompt=form.prompt or None,
        temperature=form.temperature,
    )


def _clock(seconds: float, separator: str) -> str:
    millis = round(seconds * 1000)
    hours, millis = divmod(millis, 3_600_000)
    minutes, millis = divmod(millis, 60_000)
    whole, millis = divmod(millis, 1000)
    return f"{hours:02d}:{minutes:02d}:{whole:02d}{separator}{millis:03d}"


def answer(form: TranscriptionForm, task: str, heard: Mapping[str, Any]) -> tuple[str | dict[str, Any], str]:
    """The answer in the asked format, and its media type."""
    text, segments = str(heard["text"]), list(heard.get("segments") or ())
    fmt = form.response_format
    if fmt == "json":
        return {"text": text}, "application/json"
    if fmt == "text":
        return text + "\n", "text/plain; charset=utf-8"
    if fmt == "verbose_json":
        listed = [
            {
                "id": index,
                "seek": round(float(segment["start"]) * 100),
                "start": segment["start"],
                "end": segment["end"],
                "text": segment["text"],
                "tokens": segment.get("tokens", []),
                "temperature": form.temperature,
            }
            for index, segment in enumerate(segments)
        ]
        body = {"task": task, "language": heard.get("language"), "duration": heard["duration"], "text": text}
        return {**body, "segments": listed}, "application/json"
    cues = [segment for segment in segments if segment["text"]]
    if fmt == "srt":
        blocks = [
            f"{index}\n{_clock(cue['start'], ',')} --> {_clock(cue['end'], ',')}\n{cue['text']}\n"
            for index, cue in enumerate(cues, 1)
        ]
        return "\n".join(blocks), "application/x-subrip; charset=utf-8"
    blocks = [f"{_clock(cue['start'], '.')} --> {_clock(cue['end'], '.')}\n{cue['text']}\n" for cue in cues]
    return "WEBVTT\n\n" + "\n".join(blocks), "text/vtt; charset=utf-8"


Task = Literal["transcribe", "translate"]
