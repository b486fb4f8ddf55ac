"""Speech end to end: a kind: speech model from system://espeak-ng provisioned by a real hive (nothing is
downloaded; the hive checks the program), served by an espeak worker, asked for through the queen with the
official openai client and with plain HTTP: audio streamed as it is made, each format readable, refusals by
name, a client that leaves stops its worker's espeak-ng, and a parked model starts on the first request."""

from __future__ import annotations

import io
import shutil
import time
import wave
from collections.abc import Iterator

import httpx
import openai
import pytest

from tests.fleet import Fleet, make_fleet

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        shutil.which("espeak-ng") is None, reason="espeak-ng is not installed (apt-get install espeak-ng)"
    ),
]
SENTENCE = "Declarative inference across the machines you own."


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    root = tmp_path_factory.mktemp("speech")
    fleet = make_fleet(root, "system://espeak-ng", model="voice", model_options="kind: speech, idle_timeout: 0")
    applied = fleet.rbee("apply", str(fleet.spec), "--yes")
    assert applied.returncode == 0, applied.stdout + applied.stderr
    yield fleet
    fleet.rbee("destroy", str(fleet.spec), "--yes")


def wav_seconds(data: bytes) -> float:
    with wave.open(io.BytesIO(data)) as audio:
        assert (audio.getnchannels(), audio.getsampwidth()) == (1, 2)
        return len(audio.readframes(10**9)) / 2 / audio.getframerate()


def test_the_openai_client_gets_speech_in_each_format(fleet: Fleet) -> None:
    with openai.OpenAI(base_url=f"{fleet.queen_url}/v1", api_key=fleet.api_key, max_retries=0) as client:
        wav = client.audio.speech.create(model="voice", voice="alloy", input=SENTENCE, response_format="wav")
        assert wav.response.headers["content-type"] == "audio/wav"
        assert 1.5 < wav_seconds(wav.content) < 8.0
        pcm = client.audio.speech.create(model="voice", voice="alloy", input=SENTENCE, response_format="pcm")
        assert pcm.content == wav.content[44:], "the same samples, bare"
        assert pcm.response.headers["x-sample-rate"] == "22050"
        mp3 = client.audio.speech.create(model="voice", voice="alloy", input=SENTENCE)  # mp3: OpenAI's default
        assert mp3.response.headers["content-type"] == "audio/mpeg"
        assert mp3.content[0] == 0xFF and mp3.content[1] & 0xE0 == 0xE0
        slow = client.audio.speech.create(
            model="voice", voice="alloy", input=SENTENCE, response_format="pcm", speed=0.5
        )
        assert len(slow.content) > 1.5 * len(pcm.content)


def test_audio_streams_as_it_is_made(fleet: Fleet) -> None:
    long = " ".join([SENTENCE] * 80)
    arrivals = []
    started = time.monotonic()
    client = openai.OpenAI(base_url=f"{fleet.queen_url}/v1", api_key=fleet.api_key, max_retries=0)
    speaking = client.audio.speech.with_streaming_response.create(
        model="voice", voice="nova", input=long, response_format="pcm"
    )
    with client, speaking as reply:
        for chunk in reply.iter_bytes():
            arrivals.append((time.monotonic() - started, len(chunk)))
    total = sum(size for _, size in arrivals)
    assert total > 2 * 22050 * 120, "over two minutes of speech"
    assert len(arrivals) > 10 and arrivals[0][0] < arrivals[-1][0] / 2, (arrivals[0], arrivals[-1])


def test_refusals_name_the_field(fleet: Fleet) -> None:
    def ask(**body: object) -> httpx.Response:
        fields = {"model": "voice", "voice": "alloy", "input": SENTENCE, "response_format": "wav", **body}
        return httpx.post(f"{fleet.queen_url}/v1/audio/speech", json=fields, headers=fleet.keyed, timeout=30)

    unknown = ask(voice="klingon")
    assert unknown.status_code == 400 and unknown.json()["error"]["param"] == "voice"
    assert "en-us" in unknown.json()["error"]["message"]
    assert ask(voice="../etc").json()["error"]["param"] == "voice"
    flac = ask(response_format="flac")
    assert flac.status_code == 400 and flac.json()["error"]["param"] == "response_format"
    assert "mp3, wav" in flac.json()["error"]["message"] or "wav, pcm, mp3" in flac.json()["error"]["message"]
    assert ask(instructions="whisper it").json()["error"]["param"] == "instructions"
    assert ask(speed=9).status_code == 400
    assert ask(input="").status_code == 400
    chat = httpx.post(
        f"{fleet.queen_url}/v1/chat/completions",
        json={"model": "voice", "messages": [{"role": "user", "content": "hi"}]},
        headers=fleet.keyed,
    )
    assert chat.status_code == 400 and "/v1/audio/speech" in chat.json()["error"]["message"]
    nokey = httpx.post(f"{fleet.queen_url}/v1/audio/speech", json={"model": "voice", "voice": "alloy", "input": "x"})
    assert nokey.status_code == 401


def test_a_client_that_leaves_stops_the_engine(fleet: Fleet) -> None:
    long = " ".join([SENTENCE] * 2000)
    body = {"model": "voice", "voice": "alloy", "input": long[:4096], "response_format": "pcm", "speed": 0.25}
    with httpx.stream("POST", f"{fleet.queen_url}/v1/audio/speech", json=body, headers=fleet.keyed) as reply:
        assert reply.status_code == 200
        next(reply.iter_bytes())
    deadline = time.monotonic() + 10
    while espeak_processes() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not espeak_processes(), "espeak-ng was left running after its client left"
    state = httpx.get(f"{fleet.queen_url}/v2/status", headers=fleet.operator).json()
    voices = [route for route in state["routes"] if route["model"] == "voice"]
    assert len(voices) == 1 and voices[0]["in_flight"] == 0, state["routes"]


def espeak_processes() -> list[str]:
    found = []
    for stat in __import__("pathlib").Path("/proc").glob("[0-9]*/comm"):
        try:
            if stat.read_text().strip() == "espeak-ng":
                found.append(stat.parent.name)
        except OSError:
            pass
    return found


def test_the_catalog_holds_the_program_and_the_plan_shows_it(fleet: Fleet) -> None:
    state = httpx.get(f"{fleet.hive_url}/v1/state", headers=fleet.hive_auth()).json()
    entry = next(model for model in state["catalog"] if model["name"] == "voice")
    assert entry["format"] == "espeak" and entry["size_bytes"] == 0
    assert [worker["backend"] for worker in state["workers"]] == ["espeak"]
    models = httpx.get(f"{fleet.queen_url}/v1/models", headers=fleet.keyed).json()
    assert [model["id"] for model in models["data"]] == ["voice"]
    planned = fleet.rbee("plan", str(fleet.spec))
    assert planned.returncode == 0 and "voice" in planned.stdout, planned.stdout


def test_a_parked_speech_model_starts_on_its_first_request(tmp_path_factory: pytest.TempPathFactory) -> None:
    root = tmp_path_factory.mktemp("parked-speech")
    fleet = make_fleet(root, "system://espeak-ng", model="voice", model_options="kind: speech, idle_timeout: 1")
    applied = fleet.rbee("apply", str(fleet.spec), "--yes")
    assert applied.returncode == 0, applied.stdout + applied.stderr
    try:
        deadline = time.monotonic() + 30
        while workers_of(fleet) and time.monotonic() < deadline:  # idle for a second: parked
            time.sleep(0.2)
        assert not workers_of(fleet), "the idle worker was not parked"
        body = {"model": "voice", "voice": "alloy", "input": SENTENCE, "response_format": "wav"}
        reply = httpx.post(f"{fleet.queen_url}/v1/audio/speech", json=body, headers=fleet.keyed, timeout=60)
        assert reply.status_code == 200, reply.text
        assert wav_seconds(reply.content) > 1.5
    finally:
        fleet.rbee("destroy", str(fleet.spec), "--yes")


def workers_of(fleet: Fleet) -> list[dict[str, object]]:
    state = httpx.get(f"{fleet.hive_url}/v1/state", headers=fleet.hive_auth()).json()
    return [worker for worker in state["workers"] if worker["state"] in ("idle", "busy", "loading")]


def test_rbee_infer_writes_speech_to_a_file(fleet: Fleet, tmp_path: __import__("pathlib").Path) -> None:
    out = tmp_path / "hello.wav"
    spoken = fleet.rbee("infer", "-m", "voice", "--out", str(out), "--voice", "en-gb", SENTENCE)
    assert spoken.returncode == 0, spoken.stderr
    assert wav_seconds(out.read_bytes()) > 1.5
    assert "bytes of wav" in spoken.stderr
    assert sorted(path.name for path in tmp_path.iterdir()) == ["hello.wav"], "no partial file is left"
    wrong = fleet.rbee("infer", "-m", "voice", "--out", str(tmp_path / "hello.ogg"), SENTENCE)
    assert wrong.returncode == 1 and ".wav" in wrong.stderr and not (tmp_path / "hello.ogg").exists()
    refused = fleet.rbee("infer", "-m", "voice", "--out", str(tmp_path / "x.wav"), "--voice", "klingon", SENTENCE)
    assert refused.returncode == 1 and "no voice klingon" in refused.stderr
    assert sorted(path.name for path in tmp_path.iterdir()) == ["hello.wav"], "a refusal leaves no file"
    as_text = fleet.rbee("infer", "-m", "voice", SENTENCE)
    assert as_text.returncode == 1 and "--out" in as_text.stderr, as_text.stderr
