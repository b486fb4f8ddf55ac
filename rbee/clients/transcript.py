"""Proof-bundle transcripts (see rbee/queen/transcript.py), the lines themselves: with `RBEE_TRANSCRIPT=FILE` set,
the queen and the keeper's calls to it append one JSON line each to FILE. Never a header: credentials travel in
headers, never in bodies."""

from __future__ import annotations

import json
import os
import time
from typing import Any

MAX_BODY = 64 << 10
VARIABLE = "RBEE_TRANSCRIPT"


def path() -> str | None:
    return os.environ.get(VARIABLE) or None


def body(data: bytes) -> Any:
    """A body as JSON when it is JSON, else as text, cut at MAX_BODY."""
    cut = data[:MAX_BODY]
    try:
        return json.loads(cut)
    except ValueError:
        return cut.decode("utf-8", "replace")


def append(file: str, record: dict[str, Any]) -> None:
    """One line, written by one write() to a file opened for appending: lines from the queen and the keeper
    (separate processes) do not interleave."""
    line = (json.dumps(record, separators=(",", ":"), default=str) + "\n").encode()
    fd = os.open(file, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)


def keeper_call(method: str, url: str, status: int | None, started: float) -> None:
    """The keeper's side: which call it made of the queen and how it was answered (None: not at all)."""
    file = path()
    if file is not None:
        record = {"at": started, "who": "keeper", "method": method, "path": url, "status": status}
        append(file, {**record, "seconds": round(time.time() - started, 4)})
