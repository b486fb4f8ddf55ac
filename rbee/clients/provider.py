"""A provider's OpenAI API as the queen calls it: another rbee queen, or any OpenAI-compatible endpoint. One
pooled aiohttp session for all of them (the same client that relays workers at 1,000 streams), each request with
that provider's own key.

A call is opened (`open`: the request sent, the answer's status and its first bytes awaited, within a bound) and
then pumped; until its first bytes it can still go to another provider, after them it cannot.
"""

from __future__ import annotations

import json
import ssl
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp

TAIL = 8
"""Chunks of an answer kept to find its usage in (an rbee queen's end comment, OpenAI's usage chunk)."""


class ProviderCallError(Exception):
    """The provider refused or failed; the message is safe to show a client (it names no key). `code`:
    `unreachable` (no connection, or no answer in time), `failed` (5xx or a broken answer), `busy` (429, 503),
    `unauthorized` (401, 403: this queen's key is refused), `no_model` (404), `client_error` (another 4xx: the
    request itself is wrong, its body in `body`)."""

    def __init__(self, message: str, code: str, status: int | None = None, body: bytes = b"") -> None:
        super().__init__(message)
        self.code, self.status, self.body = code, status, body

    @property
    def retriable(self) -> bool:
        return self.code != "client_error"


class ProviderClient:
    def __init__(self) -> None:
        self._session: aiohttp.ClientSession | None = None

    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            # Providers are other people's servers: their certificates are checked against the system's roots.
            connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=60, ssl=ssl.create_default_context())
            timeout = aiohttp.ClientTimeout(total=None, sock_connect=5, sock_read=None)
            self._session = aiohttp.ClientSession(connector=connector, timeout=timeout)
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            session, self._session = self._session, None
            await session.close()

    async def models(
        self, endpoint: str, key: str | None, seconds: float, trust: ssl.SSLContext | None = None
    ) -> list[str]:
        """The model ids its `GET /models` lists; ProviderCallError when it does not answer that."""
        try:
            async with self.session().get(
                f"{endpoint}/models",
                headers=_headers(key),
                timeout=aiohttp.ClientTimeout(total=seconds),
                ssl=trust or True,
            ) as response:
                body = await response.read()
                if response.status != 200:
                    raise refusal(response.status, body, endpoint)
        except (aiohttp.ClientError, TimeoutError, ConnectionError) as error:
            raise ProviderCallError(f"{endpoint} did not answer ({type(error).__name__})", "unreachable") from None
        try:
            listed = json.loads(body)["data"]
            return [str(item["id"]) for item in listed]
        except (ValueError, KeyError, TypeError):
            raise ProviderCallError(f"{endpoint}/models is not an OpenAI model list", "failed") from None

    def call(
        self, endpoint: str, path: str, key: str | None, body: dict[str, Any], trust: ssl.SSLContext | None = None
    ) -> ProviderCall:
        """`trust`: the provider's own CA (an rbee queen off loopback serves TLS with its fleet's CA)."""
        return ProviderCall(self.session(), f"{endpoint}{path}", key, body, trust)


class ProviderCall:
    """One forwarded request: `open` it (its status and first bytes, within a bound), then `pump` the rest."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        url: str,
        key: str | None,
        body: dict[str, Any],
        trust: ssl.SSLContext | None = None,
    ) -> None:
        self._request = session, url, key, body
        self._trust: ssl.SSLContext | bool = trust or True
        """True: the session's own context (the system's roots)."""
        self._response: aiohttp.ClientResponse | None = None
        self.first: bytes = b""
        self.first_at: float | None = None
        self.status = 0
        self.tail: deque[bytes] = deque(maxlen=TAIL)

    async def open(self) -> None:
        """Send the request and wait for its first bytes; ProviderCallError when it is refused or fails first. A
        timeout around this (the caller's) is a provider that sent nothing in time."""
        session, url, key, body = self._request
        try:
            response = await session.post(url, data=json.dumps(body), headers=_headers(key), ssl=self._trust)
            if response.status != 200:
                try:
                    raise refusal(response.status, await response.read(), url)
                finally:
                    response.release()
            self._response, self.status = response, response.status
            self.first = await response.content.readany()
        except (aiohttp.ClientError, ConnectionError) as error:
            self.close()
            raise ProviderCallError(f"{url} went away ({type(error).__name__})", "unreachable") from None
        if not self.first:
            self.close()
            raise ProviderCallError(f"{url} answered nothing", "failed")
        self.first_at = time.monotonic()
        self.tail.append(self.first)

    @property
    def media_type(self) -> str:
        return self._response.headers.get("content-type", "application/json") if self._response else ""

    async def pump(self, deliver: Callable[[bytes], Awaitable[None]]) -> None:
        """The first bytes, then the rest as they come; ProviderCallError when the answer breaks off."""
        assert self._response is not None, "open first"
        await deliver(self.first)
        try:
            async for chunk in self._response.content.iter_any():
                self.tail.append(chunk)
                await deliver(chunk)
        except (aiohttp.ClientError, ConnectionError) as error:
            raise ProviderCallError(f"the provider's answer broke off ({type(error).__name__})", "failed") from None

    async def read(self) -> bytes:
        """The whole answer (a call that is not a stream)."""
        parts: list[bytes] = []

        async def keep(chunk: bytes) -> None:
            parts.append(chunk)

        await self.pump(keep)
        return b"".join(parts)

    def close(self) -> None:
        if self._response is not None:
            self._response.close()


def refusal(status: int, body: bytes, url: str) -> ProviderCallError:
    said = _message(body)
    message = f"{url} answered HTTP {status}" + (f": {said}" if said else "")
    if status in (401, 403):
        return ProviderCallError(f"{url} refused this queen's key (HTTP {status})", "unauthorized", status)
    if status in (429, 503):
        return ProviderCallError(message, "busy", status)
    if status == 404:
        return ProviderCallError(message, "no_model", status)
    if 400 <= status < 500:
        return ProviderCallError(message, "client_error", status, body)
    return ProviderCallError(message, "failed", status)


def _message(body: bytes) -> str | None:
    try:
        error = json.loads(body).get("error")
    except (ValueError, AttributeError):
        return None
    if isinstance(error, dict):
        return str(error.get("message"))[:300]
    return str(error)[:300] if error else None


def _headers(key: str | None) -> dict[str, str]:
    headers = {"Content-Type": "application/json"}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    return headers
