"""A file `rbee infer` writes (speech, a picture): written to a partial file beside it that becomes the file only
once the answer is whole, so a refusal, a failure or Ctrl+C never leaves a file that looks like a finished one."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

import typer
from rich.text import Text

from rbee.clients.queen import QueenCallError
from rbee.keeper.render import err, fail


@contextlib.contextmanager
def written_whole(out: Path, url: str) -> Iterator[Path]:
    """The partial file to write `out`'s bytes to; renamed to `out` when the block ends without an error. The
    queen's refusal, an unreachable queen and Ctrl+C each end the command with one sentence."""
    partial = out.with_name(f".{out.name}.partial")
    try:
        yield partial
        os.replace(partial, out)
    except QueenCallError as error:
        if error.status is not None:
            fail(f"The queen refused: {error}")
        fail(f"Cannot reach the queen at {url} ({error}); is the fleet applied? Run rbee apply.")
    except KeyboardInterrupt:
        err.print(Text(f"Interrupted: {out} was not written.", style="dim"))
        raise typer.Exit(130) from None
    finally:
        with contextlib.suppress(FileNotFoundError):
            partial.unlink()
