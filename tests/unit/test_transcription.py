"""The transcription form and each response_format's answer (OpenAI's shapes), as table cases."""

from __future__ import annotations

import pydantic
import pytest

from rbee.api import audio as audio_wire
from rbee.api import transcription, wire

HEARD = {
    "text": "hello there general kenobi",
    "language": "en",
    "duration": 31.5,
    "segments": [
        {"start": 0.0, "end": 30.0, "text": "hello there", "tokens": [1, 2]},
        {"start": 30.0, "end": 31.5, "text": "general kenobi", "tokens": [3]},
    ],
}


def form(**fields: str) -> transcription.TranscriptionForm:
    return transcription.form_of({"model": "whisper", **fields})


def test_json_and_text() -> None:
    assert transcription.answer(form(), "transcribe", HEARD) == ({"text": HEARD["text"]}, "application/json")
    body, kind = transcription.answer(form(response_format="text"), "transcribe", HEARD)
    assert body == "hello there general kenobi\n" and kind.startswith("text/plain")


def test_verbose_json_has_openais_segment_fields() -> None:
    body, _ = transcription.answer(form(response_format="verbose_json"), "translate", HEARD)
    assert isinstance(body, dict)
    assert (body["task"], body["language"], body["duration"]) == ("translate", "en", 31.5)
    assert [(s["id"], s["seek"], s["start"], s["end"], s["tokens"]) for s in body["segments"]] == [
        (0, 0, 0.0, 30.0, [1, 2]),
        (1, 3000, 30.0, 31.5, [3]),
    ]


def test_srt_and_vtt_cues() -> None:
    srt, kind = transcription.answer(form(response_format="srt"), "transcribe", HEARD)
    assert kind.startswith("application/x-subrip")
    assert srt == "1\n00:00:00,000 --> 00:00:30,000\nhello there\n\n2\n00:00:30,000 --> 00:00:31,500\ngeneral kenobi\n"
    vtt, _ = transcription.answer(form(response_format="vtt"), "transcribe", HEARD)
    assert (
        vtt == "WEBVTT\n\n00:00:00.000 --> 00:00:30.000\nhello there\n\n00:00:30.000 --> 00:00:31.500\ngeneral kenobi\n"
    )
    long = {**HEARD, "segments": [{"start": 3725.25, "end": 3755.0, "text": "late", "tokens": []}]}
    assert "01:02:05,250 --> 01:02:35,000" in str(transcription.answer(form(response_format="srt"), "x", long)[0])


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"timestamp_granularities[]": "word"}, "timestamp_granularities[]"),
        ({"stream": "true"}, "stream"),
        ({"include[]": "logprobs"}, "include[]"),
        ({"voice": "x"}, "voice"),
    ],
)
def test_what_rbee_does_not_serve_is_named(fields: dict[str, str], param: str) -> None:
    with pytest.raises(wire.Unsupported) as refused:
        form(**fields)
    assert refused.value.param == param


@pytest.mark.parametrize("fields", [{"response_format": "mp3"}, {"temperature": "2"}, {"model": ""}])
def test_bad_values(fields: dict[str, str]) -> None:
    with pytest.raises(pydantic.ValidationError):
        form(**fields)


def test_the_workers_request() -> None:
    asked = transcription.to_worker("t-1", form(language="de", prompt="Kenobi"), b"RIFF....", "translate")
    assert asked.task == "translate" and asked.language == "de" and asked.prompt == "Kenobi"
    body = audio_wire.framed(asked, b"RIFF....\n\x00\xff")
    assert audio_wire.unframed(body) == (asked, b"RIFF....\n\x00\xff"), "the recording's own bytes, newlines and all"
    for broken in (b"no newline at all", b'{"request_id": "x"}\n', b'{"audio": "x"}\nRIFF'):
        with pytest.raises(ValueError):
            audio_wire.unframed(broken)
    with pytest.raises(wire.Unsupported, match="empty"):
        transcription.to_worker("t-2", form(), b"", "transcribe")
    with pytest.raises(pydantic.ValidationError):
        transcription.to_worker("t-3", form(language="English"), b"RIFF", "transcribe")
