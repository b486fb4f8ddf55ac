"""rbee's own log files (the queen's, a hive's, a worker's), read: the last lines, those since a time, and the
lines written after, as `rbee logs` shows them. The hive serves its own and its workers' this way, so a remote
hive's logs need no SSH session.

Bounded: at most MAX_LINES lines, read from at most TAIL_BYTES at the file's end; a followed file is looked at
every POLL seconds and read again from its start when it shrank (rotated or truncated).

A line's time is its leading `YYYY-MM-DD HH:MM:SS` (the daemons' log format, local time); a line without one
(a traceback, an engine's own output) belongs to the line before it.
"""

from __future__ import annotations

import asyncio
import os
import re
import time
from collections.abc import AsyncIterator
from pathlib import Path

MAX_LINES = 10_000
TAIL_BYTES = 8 << 20
POLL = 0.5
_STAMP = re.compile(r"^(\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2})")


def stamp(line: str) -> float | None:
    """The epoch time a log line starts with, or None."""
    found = _STAMP.match(line)
    if found is None:
        return None
    try:
        return time.mktime(time.strptime(found[1], "%Y-%m-%d %H:%M:%S"))
    except ValueError:
        return None


def last_lines(path: Path, count: int, since: float | None = None) -> tuple[list[str], int]:
    """The last `count` lines of `path` (those at or after `since`, when given) and the offset its end had, to
    follow from. A missing file has no lines."""
    count = max(0, min(count, MAX_LINES))
    try:
        with path.open("rb") as file:
            end = file.seek(0, os.SEEK_END)
            start = max(0, end - TAIL_BYTES)
            file.seek(start)
            data = file.read(end - start)
    except FileNotFoundError:
        return [], 0
    lines = data.decode("utf-8", "replace").splitlines()
    if start > 0 and lines:
        lines = lines[1:]  # the first was cut in the middle
    if since is not None:
        kept, current = [], None
        for line in lines:
            current = stamp(line) or current
            if current is not None and current >= since:
                kept.append(line)
        lines = kept
    return lines[-count:] if count else [], end


async def follow(path: Path, offset: int, quiet: float = 15.0) -> AsyncIterator[str | None]:
    """Each complete line written to `path` after `offset`, as it comes, and None after every `quiet` seconds
    without one (a stream's keep-alive); forever (the caller ends it)."""
    pending, said = b"", time.monotonic()
    while True:
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            size = 0
        if size < offset:
            offset, pending = 0, b""  # rotated or truncated: the new file from its start
        if size > offset:
            with path.open("rb") as file:
                file.seek(offset)
                chunk = file.read(min(size - offset, TAIL_BYTES))
            offset += len(chunk)
            pending += chunk
            *complete, pending = pending.split(b"\n")
            for line in complete:
                yield line.decode("utf-8", "replace")
                said = time.monotonic()
        if time.monotonic() - said >= quiet:
            yield None
            said = time.monotonic()
        await asyncio.sleep(POLL)
