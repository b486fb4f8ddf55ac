"""`rbee infer`: one answer streamed through the queen's task API, with the API key from $RBEE_API_KEY (else this
RBEE_HOME's admin key). Each failure is one sentence and exit 1; Ctrl+C cancels the task on the queen (its worker
stops) and exits 130; with --retries, a busy fleet (a full queue, a key at its limit, no slot in time) is asked
again after 1, 2, 4 ... seconds."""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import typer
from rich.text import Text

from rbee.clients.queen import QueenCallError, QueenClient
from rbee.keeper import paint as painting
from rbee.keeper import speak as speaking
from rbee.keeper.home import Home
from rbee.keeper.render import err, fail

BUSY = frozenset({"queue_full", "key_limit", "deadline", "no_worker"})
"""The task error codes that mean "not now": worth asking again."""
MAX_BACKOFF = 30.0


@dataclass
class Busy(Exception):
    """The fleet refused for now; `message` is the queen's sentence."""

    code: str
    message: str


def infer(
    prompt: str,
    model: str,
    max_tokens: int,
    temperature: float,
    seed: int | None,
    system: str | None,
    url: str | None,
    retries: int = 0,
    speech: tuple[Path, str, float] | None = None,
    heard: Path | None = None,
    picture: tuple[str, int | None] = ("auto", None),
) -> None:
    """Stream an answer; with `speech` (the file, the voice, the speed) write MODEL's speech of `prompt`, or its
    picture when the file is a picture's (`picture`: its size and steps); with `heard` (a recording) print MODEL's
    transcript of it (`prompt`, if given, is its language)."""
    home = Home.default()
    recorded = home.queen()
    if url is None and recorded is None:
        fail("No queen is running for this RBEE_HOME; run rbee apply first, or pass --queen URL.")
    url = url or str((recorded or {})["url"])
    given = os.environ.get("RBEE_API_KEY")
    client = QueenClient(url, given or home.admin_key(create=False))
    if speech is not None:
        out, voice, speed = speech
        if painting.image_format(out) is not None:
            painting.paint(client, url, prompt, model, out, picture[0], picture[1], seed)
            return
        speaking.speak(client, url, prompt, model, voice, speed, out)
        return
    if heard is not None:
        speaking.transcribe(client, url, model, heard, prompt or None)
        return
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
    body = {"model": model, "messages": messages, "max_tokens": max_tokens, "temperature": temperature, "seed": seed}
    for attempt in range(1, retries + 2):
        try:
            _answer(client, body)
            return
        except Busy as busy:
            if attempt > retries:
                hint = "wait and ask again, add replicas in hive.yaml, or pass --retries"
                fail(f"The fleet is busy: {busy.message} ({busy.code}); {hint}.")
            delay = min(MAX_BACKOFF, 2.0 ** (attempt - 1))
            err.print(Text(f"queen busy ({busy.code}); retrying in {delay:g} s (attempt {attempt + 1}/{retries + 1})"))
            time.sleep(delay)
        except QueenCallError as error:
            if error.status == 401:
                whose = "the API key in RBEE_API_KEY" if given else "this RBEE_HOME's admin key (RBEE_API_KEY is unset)"
                fail(f"Authentication failed: the queen at {url} refused {whose}; rbee key shows the admin key.")
            if error.status == 400 and "/v1/audio/speech" in str(error):
                fail(f"{model} is a speech model: write its speech to a file, rbee infer -m {model} --out speech.wav")
            if error.status == 400 and "/v1/images/generations" in str(error):
                fail(f"{model} is an image model: write its picture to a file, rbee infer -m {model} --out picture.png")
            if error.status == 400 and "/v1/audio/transcriptions" in str(error):
                fail(f"{model} is a transcription model: give it a recording, rbee infer -m {model} --file speech.wav")
            if error.status is not None:
                fail(f"The queen refused: {error}")
            fail(f"Cannot reach the queen at {url} ({error}); is the fleet applied? Run rbee apply.")


def _answer(client: QueenClient, body: dict[str, Any]) -> None:
    """Stream one task to stdout; raise Busy for a "not now" before any token."""
    answered_by = ""
    started: list[str] = []
    tokens = 0
    try:
        for event in client.run_task(body, started.append):
            if event.is_comment:
                for comment in event.comments:
                    if comment.startswith("rbee-route "):
                        route = json.loads(comment.removeprefix("rbee-route "))
                        answered_by = f", {route['worker']} on hive {route['hive']}"
                continue
            data = event.json()
            if event.name == "error":
                if tokens == 0 and data.get("code") in BUSY:
                    raise Busy(str(data.get("code")), str(data.get("error")))
                sys.stdout.write("\n")
                fail(f"Inference failed after {tokens} tokens: {data.get('error')}")
            if data.get("done"):
                sys.stdout.write("\n")
                ending = f"[{data.get('total_tokens')} tokens, {data.get('finish_reason')}{answered_by}]"
                err.print(Text(ending, style="dim"))
                return
            sys.stdout.write(data["token"])
            sys.stdout.flush()
            tokens += 1
    except KeyboardInterrupt:
        _cancelled(client, started)


def _cancelled(client: QueenClient, started: list[str]) -> NoReturn:
    """Ctrl+C: end the task on the queen, so its worker stops generating, and exit 130."""
    sys.stdout.write("\n")
    if started:
        try:
            client.cancel_task(started[0])
        except QueenCallError as error:
            fail(f"Interrupted; cancelling the task failed ({error}), it ends at its worker's time limit.", 130)
    err.print(Text("Interrupted: the task is cancelled.", style="dim"))
    raise typer.Exit(130)
