"""Server-Sent Events, read: one incremental parser for every stream rbee reads (a hive's download progress,
a worker's tokens, the queen's task and event streams), whatever arrives in each network read. No I/O here.

The encoder side is `wire.sse` (and the OpenAI stream encoder): writing SSE is one line, reading it is not.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Iterator
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class Event:
    """One dispatched block: its `event:` name (None for a plain message), its data lines joined by newlines, its
    `id:`, and the comment lines it held (`: rbee cold start ...`)."""

    name: str | None
    data: str
    id: str | None = None
    comments: tuple[str, ...] = ()

    @property
    def is_comment(self) -> bool:
        """A block of comments only (keep-alives, cold-start progress)."""
        return not self.data and self.name is None and bool(self.comments)

    def json(self) -> Any:
        return json.loads(self.data)


class Parser:
    """Feed it bytes as they arrive; it returns the events that completed."""

    def __init__(self) -> None:
        self._pending = b""

    def feed(self, chunk: bytes) -> list[Event]:
        self._pending += chunk
        events: list[Event] = []
        while True:
            end, size = _block_end(self._pending)
            if end == -1:
                return events
            block, self._pending = self._pending[:end], self._pending[end + size :]
            event = parse_block(block.decode("utf-8", errors="replace"))
            if event is not None:
                events.append(event)


def _block_end(buffer: bytes) -> tuple[int, int]:
    """Where the first blank line is, and how long the separator is (\\n\\n, or \\r\\n\\r\\n)."""
    plain, windows = buffer.find(b"\n\n"), buffer.find(b"\r\n\r\n")
    if windows != -1 and (plain == -1 or windows < plain):
        return windows, 4
    return plain, 2


def parse_block(block: str) -> Event | None:
    name: str | None = None
    event_id: str | None = None
    data: list[str] = []
    comments: list[str] = []
    for line in block.splitlines():
        if line.startswith(":"):
            comments.append(line[1:].strip())
            continue
        field, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if field == "data":
            data.append(value)
        elif field == "event":
            name = value
        elif field == "id":
            event_id = value
    if not data and not comments:
        return None
    return Event(name, "\n".join(data), event_id, tuple(comments))


def events(chunks: Iterable[bytes]) -> Iterator[Event]:
    parser = Parser()
    for chunk in chunks:
        yield from parser.feed(chunk)


async def aevents(chunks: AsyncIterable[bytes]) -> AsyncIterator[Event]:
    parser = Parser()
    async for chunk in chunks:
        for event in parser.feed(chunk):
            yield event
