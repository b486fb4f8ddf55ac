"""`rbee infer -m MODEL --out picture.png PROMPT` for image models: the picture painted through the queen, each
denoising step shown as it is made, the file's format from its suffix (.png, .jpg, .webp). The picture goes to a
partial file that becomes FILE only once it is whole: a refusal, a failure or Ctrl+C leaves no file."""

from __future__ import annotations

import base64
import time
from pathlib import Path

from rich.text import Text

from rbee.api.image_generation import ImageFormat
from rbee.clients.queen import QueenCallError, QueenClient
from rbee.keeper import outfile
from rbee.keeper.render import err, fail

SUFFIXES = {".png": ImageFormat.PNG, ".jpg": ImageFormat.JPEG, ".jpeg": ImageFormat.JPEG, ".webp": ImageFormat.WEBP}


def image_format(out: Path) -> ImageFormat | None:
    """The picture format `out`'s suffix names; None when it names none (a file for speech)."""
    return SUFFIXES.get(out.suffix.lower())


def paint(
    client: QueenClient, url: str, prompt: str, model: str, out: Path, size: str, steps: int | None, seed: int | None
) -> None:
    fmt = image_format(out)
    assert fmt is not None
    body = {"model": model, "prompt": prompt, "size": size, "output_format": str(fmt), "steps": steps, "seed": seed}
    started = time.monotonic()
    picture: dict[str, object] | None = None
    with outfile.written_whole(out, url) as partial:
        try:
            for event in client.paint({name: value for name, value in body.items() if value is not None}):
                if event.is_comment or not event.data:
                    continue
                data = event.json()
                if "error" in data:
                    fail(f"The picture failed: {data['error'].get('message')}")
                if data.get("type") == "rbee.image_generation.progress":
                    err.print(Text(f"step {data['step']}/{data['steps']}", style="dim"), end="\r")
                elif data.get("type") == "image_generation.completed":
                    picture = data
        except QueenCallError as error:
            if error.status == 400 and "/v1/audio/speech" in str(error):
                fail(f"{model} is a speech model: write its speech to a .wav, .mp3 or .pcm file, not {out.name}")
            raise
        if picture is None:
            fail("The queen's answer ended without a picture.")
        partial.write_bytes(base64.b64decode(str(picture["b64_json"])))
    seconds = time.monotonic() - started
    err.print(Text(f"[{out}: {picture['size']} {fmt} in {seconds:.1f} s]", style="dim"))
