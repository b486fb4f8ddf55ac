"""Transcription end to end: a tiny random Whisper made here (tests/models.py) provisioned from file:// by a real
hive, served by a whisper worker (transformers), asked through the queen with the official openai client and
with plain multipart uploads: each response_format's shape, translations, refusals by name, a parked model
started by its first upload. The model is random, so what it says is noise: the shape is checked, not the
words (a real Whisper is needed for accuracy, and the Hub is not reachable here)."""

from __future__ import annotations

import io
import re
import shutil
import subprocess
import time
import wave
from collections.abc import Iterator

import httpx
import openai
import pytest

from tests.fleet import Fleet, make_fleet
from tests.models import make_tiny_whisper

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng makes the recordings: apt-get it"),
]
SENTENCE = "The quick brown fox jumps over the lazy dog."


@pytest.fixture(scope="module")
def recording(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """eSpeak NG's reading of a known sentence, 22.05 kHz 16-bit WAV."""
    path = tmp_path_factory.mktemp("recording") / "fox.wav"
    subprocess.run(["espeak-ng", "-w", str(path), SENTENCE], check=True, timeout=30)
    return path.read_bytes()


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    root = tmp_path_factory.mktemp("transcription")
    whisper = make_tiny_whisper(root / "whisper")
    fleet = make_fleet(root, f"file://{whisper}", model="whisper", model_options="kind: transcription, idle_timeout: 0")
    applied = fleet.rbee("apply", str(fleet.spec), "--yes")
    assert applied.returncode == 0, applied.stdout + applied.stderr
    yield fleet
    fleet.rbee("destroy", str(fleet.spec), "--yes")


def client_of(fleet: Fleet) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{fleet.queen_url}/v1", api_key=fleet.api_key, max_retries=0)


def test_the_openai_client_gets_a_transcript(fleet: Fleet, recording: bytes) -> None:
    with client_of(fleet) as client:
        heard = client.audio.transcriptions.create(model="whisper", file=("fox.wav", recording), language="en")
        assert isinstance(heard.text, str)
        verbose = client.audio.transcriptions.create(
            model="whisper", file=("fox.wav", recording), response_format="verbose_json", language="en"
        )
        assert verbose.language == "en" and verbose.task == "transcribe"
        with wave.open(io.BytesIO(recording)) as audio:
            seconds = audio.getnframes() / audio.getframerate()
        assert verbose.duration == pytest.approx(seconds, abs=0.01)
        assert verbose.segments is not None and len(verbose.segments) == 1
        assert (verbose.segments[0].start, verbose.segments[0].end) == (0.0, pytest.approx(seconds, abs=0.01))
        assert verbose.text == heard.text, "temperature 0: the same words again"
    translated = httpx.post(  # the openai client deprecates its translations call: asked plainly
        f"{fleet.queen_url}/v1/audio/translations",
        files={"file": ("fox.wav", recording, "audio/wav")},
        data={"model": "whisper", "response_format": "verbose_json"},
        headers=fleet.keyed,
        timeout=60,
    )
    assert translated.status_code == 200 and translated.json()["task"] == "translate"
    assert isinstance(translated.json()["text"], str)


def test_each_text_format(fleet: Fleet, recording: bytes) -> None:
    def upload(fmt: str, **fields: str) -> httpx.Response:
        return httpx.post(
            f"{fleet.queen_url}/v1/audio/transcriptions",
            files={"file": ("fox.wav", recording, "audio/wav")},
            data={"model": "whisper", "response_format": fmt, "temperature": "0.7", "language": "de", **fields},
            headers=fleet.keyed,
            timeout=60,
        )

    text = upload("text")
    assert (
        text.status_code == 200 and text.headers["content-type"].startswith("text/plain") and text.text.endswith("\n")
    )
    srt, vtt = upload("srt"), upload("vtt")
    assert srt.status_code == 200 and vtt.status_code == 200
    assert vtt.text.startswith("WEBVTT")
    cue = re.compile(r"\d\d:\d\d:\d\d[,.]\d{3} --> \d\d:\d\d:\d\d[,.]\d{3}")
    assert srt.text == "" or (srt.text.startswith("1\n") and cue.search(srt.text)), srt.text
    assert "-->" not in vtt.text or cue.search(vtt.text)


def test_refusals_name_the_field(fleet: Fleet, recording: bytes) -> None:
    def upload(content: bytes = recording, **fields: str) -> httpx.Response:
        return httpx.post(
            f"{fleet.queen_url}/v1/audio/transcriptions",
            files={"file": ("fox.wav", content, "audio/wav")},
            data={"model": "whisper", **fields},
            headers=fleet.keyed,
            timeout=60,
        )

    def param(reply: httpx.Response) -> object:
        assert reply.status_code == 400, reply.text
        return reply.json()["error"]["param"]

    assert param(upload(b"this is no audio at all")) == "file"
    assert "WAV" in upload(b"this is no audio at all").json()["error"]["message"]
    assert param(upload(language="xx")) == "language"
    assert "de, en, fr" in upload(language="xx").json()["error"]["message"]
    assert param(upload(**{"timestamp_granularities[]": "word"})) == "timestamp_granularities[]"
    assert upload(**{"timestamp_granularities[]": "segment"}).status_code == 200
    assert param(upload(response_format="mp3")) == "response_format"
    assert param(upload(b"")) == "file"
    as_json = httpx.post(
        f"{fleet.queen_url}/v1/audio/transcriptions", json={"model": "whisper"}, headers=fleet.keyed, timeout=30
    )
    assert as_json.status_code == 400 and "multipart" in as_json.text
    wrong = httpx.post(
        f"{fleet.queen_url}/v1/chat/completions",
        json={"model": "whisper", "messages": [{"role": "user", "content": "hi"}]},
        headers=fleet.keyed,
    )
    assert wrong.status_code == 400 and "/v1/audio/transcriptions" in wrong.json()["error"]["message"]
    too_big = httpx.post(
        f"{fleet.queen_url}/v1/audio/transcriptions",
        files={"file": ("big.wav", b"\0" * (26 << 20), "audio/wav")},
        data={"model": "whisper"},
        headers=fleet.keyed,
        timeout=60,
    )
    assert too_big.status_code == 413
    nokey = httpx.post(
        f"{fleet.queen_url}/v1/audio/transcriptions", files={"file": ("a.wav", recording)}, data={"model": "whisper"}
    )
    assert nokey.status_code == 401


def test_the_worker_is_a_whisper_worker(fleet: Fleet) -> None:
    state = httpx.get(f"{fleet.hive_url}/v1/state", headers=fleet.hive_auth()).json()
    assert [worker["backend"] for worker in state["workers"]] == ["whisper"]


def test_a_parked_transcription_model_starts_on_its_first_upload(
    tmp_path_factory: pytest.TempPathFactory, recording: bytes
) -> None:
    root = tmp_path_factory.mktemp("parked-transcription")
    whisper = make_tiny_whisper(root / "whisper")
    fleet = make_fleet(root, f"file://{whisper}", model="whisper", model_options="kind: transcription, idle_timeout: 1")
    applied = fleet.rbee("apply", str(fleet.spec), "--yes")
    assert applied.returncode == 0, applied.stdout + applied.stderr
    try:
        deadline = time.monotonic() + 30
        while running(fleet) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not running(fleet), "the idle worker was not parked"
        with client_of(fleet) as client:
            heard = client.audio.transcriptions.create(model="whisper", file=("fox.wav", recording), language="en")
        assert isinstance(heard.text, str)
    finally:
        fleet.rbee("destroy", str(fleet.spec), "--yes")


def running(fleet: Fleet) -> list[object]:
    state = httpx.get(f"{fleet.hive_url}/v1/state", headers=fleet.hive_auth()).json()
    return [worker for worker in state["workers"] if worker["state"] in ("idle", "busy", "loading")]


def test_rbee_infer_prints_a_transcript(fleet: Fleet, recording: bytes, tmp_path: object) -> None:
    import pathlib

    path = pathlib.Path(str(tmp_path)) / "fox.wav"
    path.write_bytes(recording)
    heard = fleet.rbee("infer", "-m", "whisper", "--file", str(path), "en")
    assert heard.returncode == 0 and "heard in" in heard.stderr, heard.stderr
    missing = fleet.rbee("infer", "-m", "whisper", "--file", str(path.with_name("none.wav")), "")
    assert missing.returncode == 1 and "no such file" in missing.stderr
    wrong = fleet.rbee("infer", "-m", "whisper", "--file", str(path), "xx")
    assert wrong.returncode == 1 and "no language xx" in wrong.stderr
    as_text = fleet.rbee("infer", "-m", "whisper", "hello")
    assert as_text.returncode == 1 and "--file" in as_text.stderr, as_text.stderr
