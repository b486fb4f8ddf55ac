"""The queen's upstream client: one pooled aiohttp session to every worker, reading their SSE streams.

aiohttp with keep-alive and no pool limit relayed 1,000 concurrent streams where a shared httpx client collapsed
(FACTS.md). Events are parsed here because the queen re-shapes them for OpenAI clients.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp


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
            timeout = aiohttp.ClientTimeout(total=None, sock_connect=5, sock_read=300)
            headers = {"Authorization": f"Bearer {self._token}"} if self._token else {}
            self._session = aiohttp.ClientSession(connector=connector, timeout=timeout, headers=headers)
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def execute(self, url: str, body: dict[str, Any]) -> AsyncIterator[Event]:
        try:
            async with self.session().post(f"{url}/v1/execute", json=body) as response:
                if response.status != 200:
                    detail = await response.text()
                    raise UpstreamError(
                        _message(detail) or f"the worker answered HTTP {response.status}",
                        "worker_refused" if response.status == 503 else "worker_error",
                    )
                event_name = None
                async for raw in response.content:
                    line = raw.rstrip(b"\r\n")
                    if not line:
                        event_name = None
                        continue
                    if line.startswith(b"event:"):
                        event_name = line[6:].strip().decode()
                    elif line.startswith(b"data:"):
                        data = json.loads(line[5:])
                        if event_name == "error":
                            yield Event("error", data)
                            return
                        kind = "done" if data.get("done") else "token"
                        yield Event(kind, data)
                        if kind == "done":
                            return
        except (aiohttp.ClientError, TimeoutError, ConnectionError) as error:
            raise UpstreamError(f"the worker went away mid-request ({type(error).__name__})", "worker_lost") from None
        raise UpstreamError("the worker closed the stream without finishing", "worker_lost")


def _message(body: str) -> str | None:
    try:
        data = json.loads(body)
    except ValueError:
        return None
    error = data.get("error") if isinstance(data, dict) else None
    if isinstance(error, dict):
        return str(error.get("message"))
    return str(error) if error else None
