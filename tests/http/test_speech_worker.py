"""A speech worker (the espeak backend: eSpeak NG, the real program) over its HTTP API: audio streamed in the
format asked, voices checked before any process starts, and a request cut short never looks whole."""

from __future__ import annotations

import io
import shutil
import struct
import time
import wave
from collections.abc import Iterator

import pytest
from starlette.testclient import TestClient

from rbee.api.state import WorkerState
from rbee.worker.backends.espeak import Espeak
from rbee.worker.server import Runtime, WorkerOptions, create_app

TOKEN = {"Authorization": "Bearer w-token"}
PROGRAM = shutil.which("espeak-ng")
pytestmark = pytest.mark.skipif(PROGRAM is None, reason="espeak-ng is not installed (apt-get install espeak-ng)")
SENTENCE = "The quick brown fox jumps over the lazy dog."


@pytest.fixture(scope="module")
def engine() -> Espeak:
    assert PROGRAM is not None
    speaker = Espeak(PROGRAM)
    speaker.load(lambda _: None)
    return speaker


@pytest.fixture
def client(engine: Espeak) -> Iterator[tuple[TestClient, Runtime]]:
    options = WorkerOptions("w-1", "voice", str(PROGRAM), "espeak", "cpu", "127.0.0.1", 0, None, "w-token")
    runtime = Runtime(options=options, engine=engine, state=WorkerState.IDLE)
    with TestClient(create_app(runtime)) as test_client:
        yield test_client, runtime


def speak(client: TestClient, **fields: object) -> tuple[int, bytes, dict[str, str]]:
    body = {"request_id": "s-1", "input": SENTENCE, "voice": "alloy", **fields}
    reply = client.post("/v1/execute", json=body, headers=TOKEN)
    return reply.status_code, reply.content, dict(reply.headers)


def seconds_of_wav(data: bytes) -> tuple[int, float]:
    with wave.open(io.BytesIO(data)) as audio:
        assert (audio.getnchannels(), audio.getsampwidth()) == (1, 2)
        rate = audio.getframerate()
        frames = audio.readframes(10**9)
    return rate, len(frames) / 2 / rate


def test_wav_is_a_readable_file_of_the_sentence_at_the_engines_rate(client: tuple[TestClient, Runtime]) -> None:
    status, data, headers = speak(client[0], format="wav")
    assert status == 200 and headers["content-type"] == "audio/wav"
    rate, seconds = seconds_of_wav(data)
    assert rate == int(headers["x-sample-rate"]) == 22050
    assert 1.5 < seconds < 6.0, seconds  # nine words
    assert client[1].state is WorkerState.IDLE and not client[1].active


def test_pcm_is_the_same_samples_without_the_header_and_speed_shortens_it(client: tuple[TestClient, Runtime]) -> None:
    _, wav, _ = speak(client[0], format="wav")
    status, pcm, headers = speak(client[0], format="pcm")
    assert status == 200 and headers["content-type"] == "audio/pcm"
    assert pcm == wav[44:] and len(pcm) % 2 == 0
    _, fast, _ = speak(client[0], format="pcm", speed=2.0)
    assert len(fast) < 0.7 * len(pcm)
    samples = struct.unpack(f"<{len(pcm) // 2}h", pcm)
    assert max(map(abs, samples)) > 1000, "it is not silence"


def test_mp3_frames(client: tuple[TestClient, Runtime]) -> None:
    status, data, headers = speak(client[0], format="mp3")
    assert status == 200 and headers["content-type"] == "audio/mpeg"
    assert data[0] == 0xFF and data[1] & 0xE0 == 0xE0, data[:4]  # an MPEG audio frame's sync word


def test_voices_openai_names_languages_and_variants(client: tuple[TestClient, Runtime]) -> None:
    for voice in ("nova", "de", "en-us+f3", "fr"):
        status, data, _ = speak(client[0], voice=voice, format="wav")
        assert status == 200 and len(data) > 10_000, voice
    _, male, _ = speak(client[0], voice="echo", format="pcm")
    _, female, _ = speak(client[0], voice="nova", format="pcm")
    assert male != female


@pytest.mark.parametrize("voice", ["klingon", "en-us+nosuchvariant", "-x", "../../etc/passwd"])
def test_a_voice_it_does_not_have_is_a_400_naming_its_voices(client: tuple[TestClient, Runtime], voice: str) -> None:
    status, data, _ = speak(client[0], voice=voice)
    assert status == 400
    text = data.decode()
    assert "voice" in text and (("alloy" in text and "en-us" in text) or "should match" in text.lower()), text
    assert not client[1].active


def test_text_is_never_an_argument_of_the_program(client: tuple[TestClient, Runtime]) -> None:
    # text that would be options if it reached espeak-ng's command line is only spoken
    status, data, _ = speak(client[0], input="--help -w /tmp/rbee-pwned.wav", format="wav")
    assert status == 200 and seconds_of_wav(data)[1] > 1.0
    assert not __import__("os").path.exists("/tmp/rbee-pwned.wav")


def test_the_first_audio_leaves_before_the_last_is_made(client: tuple[TestClient, Runtime]) -> None:
    long = " ".join([SENTENCE] * 60)
    body = {"request_id": "s-2", "input": long, "voice": "alloy", "format": "pcm"}
    started = time.monotonic()
    arrivals = []
    with client[0].stream("POST", "/v1/execute", json=body, headers=TOKEN) as reply:
        assert reply.status_code == 200
        for chunk in reply.iter_raw():
            arrivals.append((time.monotonic() - started, len(chunk)))
    assert len(arrivals) > 10
    assert sum(size for _, size in arrivals) > 2 * 22050 * 60  # over a minute of speech
    assert arrivals[0][0] < arrivals[-1][0] / 2, (arrivals[0], arrivals[-1])
