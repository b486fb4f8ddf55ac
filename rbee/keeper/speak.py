"""`rbee infer` for audio models: `-m VOICE --out speech.wav TEXT` writes a speech model's speech, the format from
the file's suffix (.wav, .mp3, .pcm), as it comes to a partial file that becomes FILE only once the answer is
whole (a failed or interrupted request leaves no file that looks like a recording); `-m WHISPER --file
recording.wav [LANGUAGE]` prints a transcription model's transcript."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import typer
from rich.text import Text

from rbee.api.audio import AudioFormat
from rbee.clients.queen import QueenCallError, QueenClient
from rbee.keeper import outfile
from rbee.keeper.render import err, fail

SUFFIXES = {f".{fmt}": fmt for fmt in AudioFormat}


def audio_format(out: Path) -> AudioFormat:
    """The format `out`'s suffix names; one sentence and exit 1 for any other."""
    fmt = SUFFIXES.get(out.suffix.lower())
    if fmt is None:
        fail(f"--out {out}: rbee writes speech as {', '.join(SUFFIXES)}; name the file with one of them.")
    return fmt


def speak(client: QueenClient, url: str, text: str, model: str, voice: str, speed: float, out: Path) -> None:
    fmt = audio_format(out)
    body = {"model": model, "input": text, "voice": voice, "response_format": str(fmt), "speed": speed}
    started = time.monotonic()
    written = 0
    with outfile.written_whole(out, url) as partial, partial.open("wb") as sink:
        for chunk in client.speak(body):
            sink.write(chunk)
            written += len(chunk)
    err.print(Text(f"[{out}: {written} bytes of {fmt} in {time.monotonic() - started:.1f} s]", style="dim"))


def transcribe(client: QueenClient, url: str, model: str, recording: Path, language: str | None) -> None:
    if not recording.is_file():
        fail(f"--file {recording}: no such file; name the recording to transcribe.")
    started = time.monotonic()
    try:
        text = client.transcribe(model, recording, language)
    except QueenCallError as error:
        if error.status is not None:
            fail(f"The queen refused: {error}")
        fail(f"Cannot reach the queen at {url} ({error}); is the fleet applied? Run rbee apply.")
    except KeyboardInterrupt:
        raise typer.Exit(130) from None
    sys.stdout.write(text if text.endswith("\n") else text + "\n")
    err.print(Text(f"[{recording.name} heard in {time.monotonic() - started:.1f} s]", style="dim"))
