"""The queen's upstream client: one pooled aiohttp session to every worker.

`stream` passes a worker's bytes through untouched (the worker already wrote the client's wire format);
`events` parses rbee events for the few paths that assemble a whole answer. aiohttp with keep-alive and no pool
limit relayed 1,000 concurrent streams where a shared httpx client collapsed (FACTS.md).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp

from rbee.api import wire


class UpstreamError(Exception):
    """The worker failed or went away; the message is safe to show a client."""

    def __init__(self, message: str, code: str = "worker_error") -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True, slots=True)
class Event:
    kind: str
    """`token`, `done` or `error`."""
    data: dict[str, Any]


class Upstream:
    def __init__(self, token: str | None) -> None:
        self._token = token
        self._session: aiohttp.ClientSession | None = None

    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=60)
            # No read timeout: aiohttp re-arms a timer on every chunk when there is one, which cost a fifth of the
            # relay's CPU. A worker that dies closes its connection; one that hangs is stopped by its hive.
            timeout = aiohttp.ClientTimeout(total=None, sock_connect=5, sock_read=None)
            headers = {"Authorization": f"Bearer {self._token}"} if self._token else {}
            self._session = aiohttp.ClientSession(connector=connector, timeout=timeout, headers=headers)
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def stream(self, url: str, body: dict[str, Any]) -> AsyncIterator[bytes]:
        """The worker's response bytes as they arrive; raises UpstreamError (`worker_refused` before any byte
        when the worker is busy or loading, `worker_lost` when the connection breaks)."""
        try:
            async with self.session().post(f"{url}/v1/execute", json=body) as response:
                if response.status != 200:
                    detail = await response.text()
                    raise UpstreamError(
                        _message(detail) or f"the worker answered HTTP {response.status}",
                        "worker_refused" if response.status == 503 else "worker_error",
                    )
                async for chunk in response.content.iter_any():
                    yield chunk
        except (aiohttp.ClientError, TimeoutError, ConnectionError) as error:
            raise UpstreamError(f"the worker went away mid-request ({type(error).__name__})", "worker_lost") from None

    async def call(self, url: str, body: dict[str, Any]) -> dict[str, Any]:
        """A JSON request to a worker (embeddings)."""
        try:
            async with self.session().post(f"{url}/v1/execute", json=body) as response:
                text = await response.text()
                if response.status != 200:
                    raise UpstreamError(
                        _message(text) or f"the worker answered HTTP {response.status}",
                        "worker_refused" if response.status == 503 else "worker_error",
                    )
                answer: dict[str, Any] = json.loads(text)
                return answer
        except (aiohttp.ClientError, TimeoutError, ConnectionError) as error:
            raise UpstreamError(f"the worker went away mid-request ({type(error).__name__})", "worker_lost") from None

    async def events(self, url: str, body: dict[str, Any]) -> AsyncIterator[Event]:
        """rbee events parsed from the worker's stream (asks for the rbee format)."""
        buffer = b""
        async for chunk in self.stream(url, {**body, "format": str(wire.StreamFormat.RBEE)}):
            buffer += chunk
            while b"\n\n" in buffer:
                block, buffer = buffer.split(b"\n\n", 1)
                event = _parse_block(block)
                if event is None:
                    continue
                yield event
                if event.kind in ("done", "error"):
                    return
        raise UpstreamError("the worker closed the stream without finishing", "worker_lost")


def _parse_block(block: bytes) -> Event | None:
    name, data = None, None
    for line in block.split(b"\n"):
        if line.startswith(b"event:"):
            name = line[6:].strip().decode()
        elif line.startswith(b"data:"):
            data = json.loads(line[5:])
    if data is None:
        return None
    if name == "error":
        return Event("error", data)
    return Event("done" if data.get("done") else "token", data)


def _message(body: str) -> str | None:
    try:
        data = json.loads(body)
    except ValueError:
        return None
    error = data.get("error") if isinstance(data, dict) else None
    if isinstance(error, dict):
        return str(error.get("message"))
    return str(error) if error else None
