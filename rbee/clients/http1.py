"""A lean HTTP/1.1 client for the queen's streams to its workers: a POST written in one piece on a kept-alive
connection, its answer parsed by httptools (llhttp, the parser the daemons serve with) and its body handed on as
it comes, in what the connection read (chunked framing removed).

aiohttp's client did the same with its request and response objects, payload registry, cookie jar and timers
in the way: measured on a relayed request, that work came before the first token and was a third of the queen's
CPU per request. Only what a worker stream needs is here: one request at a time per connection, no redirects,
no cookies, no compression.
"""

from __future__ import annotations

import asyncio
import functools
import ssl
import time
from collections.abc import Callable
from typing import cast
from urllib.parse import urlsplit

import httptools

HIGH_WATER = 1 << 20
"""Bytes of an answer held unread before the connection stops reading (the client it is relayed to is slow)."""


class Broken(ConnectionError):
    """The connection closed, or the worker's answer was not HTTP, before the answer was whole."""


@functools.lru_cache(maxsize=1024)
def _split(url: str) -> tuple[tuple[str, int, bool], str, str]:
    """(where to connect: host, port, TLS), the request target and the Host header of an http(s) URL."""
    parts = urlsplit(url)
    tls = parts.scheme == "https"
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"not an http(s) URL: {url}")
    target = parts.path or "/"
    if parts.query:
        target += "?" + parts.query
    return (parts.hostname, parts.port or (443 if tls else 80), tls), target, parts.netloc


class Response:
    """A worker's answer: `status` and `headers` (names lower-case) once `Pool.post` returns, then the body with
    `async for chunk in response` (each what the connection read since the last) or `read()`. `close()` before
    the end closes the connection, which tells the worker to stop."""

    def __init__(self, connection: _Connection) -> None:
        self.status = 0
        self.headers: dict[str, str] = {}
        self._connection: _Connection | None = connection
        self._chunks: list[bytes] = []
        self._held = 0
        self._paused = False
        self._done = False
        self._error: BaseException | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._head: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def __aiter__(self) -> Response:
        return self

    async def __anext__(self) -> bytes:
        while True:
            if self._chunks:
                chunks, self._chunks, self._held = self._chunks, [], 0
                if self._paused and self._connection is not None:
                    self._paused = False
                    self._connection.resume()
                return chunks[0] if len(chunks) == 1 else b"".join(chunks)
            if self._error is not None:
                raise self._error
            if self._done:
                raise StopAsyncIteration
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None

    async def read(self) -> bytes:
        """The rest of the body, whole."""
        return b"".join([chunk async for chunk in self])

    def close(self) -> None:
        if not self._done and self._connection is not None:
            self._connection.abort()

    # -- from the connection ------------------------------------------------------------------------------------

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def _started(self, status: int) -> None:
        self.status = status
        if not self._head.done():
            self._head.set_result(None)

    def _body(self, data: bytes) -> None:
        self._chunks.append(data)
        self._held += len(data)
        if self._held > HIGH_WATER and not self._paused and self._connection is not None:
            self._paused = True
            self._connection.pause()
        self._wake()

    def _complete(self) -> None:
        self._done, self._connection = True, None
        self._wake()

    def _lost(self, error: BaseException) -> None:
        if self._done:
            return
        self._done, self._error, self._connection = True, error, None
        if not self._head.done():
            self._head.set_exception(error)
            self._head.exception()  # retrieved here: whoever awaited it may have gone (a cancel)
        self._wake()


class _Connection(asyncio.Protocol):
    """One kept-alive connection to a worker; the answer being read is `response`."""

    def __init__(self, pool: Pool, origin: tuple[str, int, bool]) -> None:
        self.pool, self.origin = pool, origin
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.response: Response | None = None
        self.closed = False
        self.idle_since = 0.0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports are not asyncio's classes

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as error:
            self._end(Broken(f"the worker's answer is not HTTP: {error}"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._end(Broken("the connection closed"))

    # httptools calls these while it parses
    def on_header(self, name: bytes, value: bytes) -> None:
        if self.response is not None:
            self.response.headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_headers_complete(self) -> None:
        if self.response is not None:
            self.response._started(self.parser.get_status_code())

    def on_body(self, body: bytes) -> None:
        if self.response is not None:
            self.response._body(body)

    def on_message_complete(self) -> None:
        response, self.response = self.response, None
        reusable = self.parser.should_keep_alive()
        if response is not None:
            response._complete()
        if reusable and not self.closed:
            self.pool._idle_again(self)
        else:
            self.abort()

    # -- for the pool and the response ----------------------------------------------------------------------------

    def send(self, response: Response, data: bytes) -> None:
        assert self.transport is not None
        self.response = response
        self.transport.write(data)

    def pause(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.pause_reading()

    def resume(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.resume_reading()

    def abort(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()
        self._end(Broken("the connection was closed mid-answer"))

    def _end(self, error: BaseException) -> None:
        response, self.response = self.response, None
        if response is not None:
            response._lost(error)
        self.pool._forget(self)


class Pool:
    """Kept-alive connections by (host, port, TLS). `tls` gives the context for https (called per connection:
    the fleet's CA may be pinned after the pool is made)."""

    def __init__(
        self, tls: Callable[[], ssl.SSLContext], connect_timeout: float = 5.0, keep_idle: float = 60.0
    ) -> None:
        self.tls, self.connect_timeout, self.keep_idle = tls, connect_timeout, keep_idle
        self._idle: dict[tuple[str, int, bool], list[_Connection]] = {}

    async def post(self, url: str, body: bytes, headers: dict[str, str]) -> Response:
        """Send a POST and wait for its answer's status and headers; Broken (a ConnectionError) or TimeoutError
        when there is none. Cancelled while waiting, the connection closes."""
        origin, target, host = _split(url)
        head = [f"POST {target} HTTP/1.1\r\nHost: {host}\r\nContent-Length: {len(body)}\r\n"]
        for name, value in headers.items():
            if "\r" in value or "\n" in value:
                raise ValueError(f"the header {name} holds a line break")
            head.append(f"{name}: {value}\r\n")
        head.append("\r\n")
        connection = self._take(origin) or await self._connect(origin)
        response = Response(connection)
        connection.send(response, "".join(head).encode("latin-1") + body)
        try:
            await response._head
        except BaseException:
            connection.abort()
            raise
        return response

    def close(self) -> None:
        for connections in list(self._idle.values()):
            for connection in list(connections):
                connection.abort()
        self._idle.clear()

    def _take(self, origin: tuple[str, int, bool]) -> _Connection | None:
        idle = self._idle.get(origin)
        now = time.monotonic()
        while idle:
            connection = idle.pop()
            if not connection.closed and now - connection.idle_since < self.keep_idle:
                return connection
            connection.abort()
        return None

    async def _connect(self, origin: tuple[str, int, bool]) -> _Connection:
        host, port, tls = origin
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(self.connect_timeout):
            _, connection = await loop.create_connection(
                lambda: _Connection(self, origin),
                host,
                port,
                ssl=self.tls() if tls else None,
                server_hostname=host if tls else None,
            )
        return connection

    def _idle_again(self, connection: _Connection) -> None:
        connection.idle_since = time.monotonic()
        self._idle.setdefault(connection.origin, []).append(connection)

    def _forget(self, connection: _Connection) -> None:
        idle = self._idle.get(connection.origin)
        if idle and connection in idle:
            idle.remove(connection)
