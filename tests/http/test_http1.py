"""The queen's lean HTTP/1.1 client for worker streams (clients/http1.py) against a real TCP server that answers
exactly as each test scripts it: chunked bodies handed on as they come, kept-alive connections reused, a
connection cut mid-answer is an error (never a short answer that looks whole), closing early tells the server,
`Connection: close` is honoured, a slow reader stops the connection's reading, and nothing waits forever."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Awaitable, Callable

import pytest

from rbee.clients import http1

Script = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


def no_tls() -> ssl.SSLContext:
    raise AssertionError("plain http only")


class Server:
    """Accepts connections and runs `script` for each request it reads (head and body)."""

    def __init__(self, script: Script) -> None:
        self.script = script
        self.connections = 0
        self.requests: list[bytes] = []
        self.closed_by_client = asyncio.Event()
        self.server: asyncio.Server | None = None

    async def __aenter__(self) -> str:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port = self.server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}"

    async def __aexit__(self, *_: object) -> None:
        assert self.server is not None
        self.server.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next(
                    int(line.split(b":")[1])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length")
                )
                self.requests.append(head + await reader.readexactly(length))
                await self.script(reader, writer)
        except (asyncio.IncompleteReadError, ConnectionError):
            self.closed_by_client.set()
        finally:
            writer.close()


def answering(raw: bytes) -> Script:
    """A script that answers every request with these bytes."""

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(raw)
        await writer.drain()

    return script


def chunk(data: bytes) -> bytes:
    return f"{len(data):x}\r\n".encode() + data + b"\r\n"


STREAM_HEAD = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"


async def test_a_chunked_answer_comes_as_it_is_written_and_the_connection_is_kept() -> None:
    gate = asyncio.Event()

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(STREAM_HEAD + chunk(b"data: one\n\n"))
        await writer.drain()
        await gate.wait()
        writer.write(chunk(b"data: two\n\n") + b"0\r\n\r\n")
        await writer.drain()

    pool = http1.Pool(no_tls)
    async with Server(script) as url:
        response = await pool.post(f"{url}/v1/execute", b'{"a": 1}', {"Authorization": "Bearer k"})
        assert response.status == 200 and response.headers["content-type"] == "text/event-stream"
        first = await asyncio.wait_for(response.__anext__(), 5)
        assert first == b"data: one\n\n"  # before the server wrote the rest
        gate.set()
        assert b"".join([part async for part in response]) == b"data: two\n\n"
        again = await pool.post(f"{url}/v1/execute", b"{}", {})
        assert await again.read() == b"data: one\n\ndata: two\n\n"
    pool.close()


async def test_requests_reuse_one_connection_and_send_head_and_body() -> None:
    pool = http1.Pool(no_tls)
    server = Server(answering(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"))
    async with server as url:
        for _ in range(3):
            response = await pool.post(f"{url}/v1/execute", b'{"x":1}', {"Authorization": "Bearer secret"})
            assert await response.read() == b"ok"
    pool.close()
    assert server.connections == 1
    assert server.requests[0].startswith(b"POST /v1/execute HTTP/1.1\r\n")
    assert b"\r\nAuthorization: Bearer secret\r\n" in server.requests[0]
    assert server.requests[0].endswith(b'\r\n\r\n{"x":1}')


async def test_a_connection_cut_mid_answer_is_an_error_not_a_short_answer() -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(STREAM_HEAD + chunk(b"data: one\n\n"))
        await writer.drain()
        writer.transport.abort()

    pool = http1.Pool(no_tls)
    async with Server(script) as url:
        response = await pool.post(f"{url}/v1/execute", b"{}", {})
        got = []
        with pytest.raises(ConnectionError):
            async for part in response:
                got.append(part)
        assert got == [b"data: one\n\n"]
        # the next request gets a new connection, not the broken one
        with pytest.raises(ConnectionError):
            await (await pool.post(f"{url}/v1/execute", b"{}", {})).read()
    pool.close()


async def test_closing_an_answer_early_closes_its_connection() -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(STREAM_HEAD)
        while True:
            writer.write(chunk(b"data: tok\n\n"))
            await writer.drain()
            await asyncio.sleep(0.01)

    pool = http1.Pool(no_tls)
    server = Server(script)
    async with server as url:
        response = await pool.post(f"{url}/v1/execute", b"{}", {})
        assert (await response.__anext__()).startswith(b"data: tok")
        response.close()
        await asyncio.wait_for(server.closed_by_client.wait(), 5)  # the server (a worker) sees the client go
        with pytest.raises(ConnectionError):
            await response.__anext__()
    pool.close()


async def test_connection_close_is_honoured() -> None:
    pool = http1.Pool(no_tls)
    server = Server(
        answering(b"HTTP/1.1 503 Service Unavailable\r\nconnection: close\r\ncontent-length: 4\r\n\r\nbusy")
    )
    async with server as url:
        for _ in range(2):
            response = await pool.post(f"{url}/v1/execute", b"{}", {})
            assert response.status == 503 and await response.read() == b"busy"
    pool.close()
    assert server.connections == 2


async def test_a_slow_reader_pauses_the_connection_and_loses_nothing() -> None:
    piece = b"x" * 65536
    pieces = 64  # 4 MiB: past the high-water mark several times over

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(STREAM_HEAD)
        for _ in range(pieces):
            writer.write(chunk(piece))
            await writer.drain()
        writer.write(b"0\r\n\r\n")
        await writer.drain()

    pool = http1.Pool(no_tls)
    async with Server(script) as url:
        response = await pool.post(f"{url}/v1/execute", b"{}", {})
        await asyncio.sleep(0.3)  # the server writes while nobody reads
        assert response._held <= http1.HIGH_WATER + 4 * len(piece)
        assert response._paused
        total = 0
        async for part in response:
            total += len(part)
            await asyncio.sleep(0)
        assert total == pieces * len(piece)
    pool.close()


async def test_an_answer_that_is_not_http_is_an_error() -> None:
    pool = http1.Pool(no_tls)
    async with Server(answering(b"SSH-2.0-OpenSSH_9.2\r\n\r\n")) as url:
        with pytest.raises(ConnectionError, match="not HTTP"):
            await asyncio.wait_for(pool.post(f"{url}/v1/execute", b"{}", {}), 5)
    pool.close()


async def test_nothing_listening_and_nothing_answering_are_bounded() -> None:
    async with Server(lambda reader, writer: asyncio.sleep(3600)) as url:
        pool = http1.Pool(no_tls)
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.3):  # how the dispatcher bounds a worker that accepts and says nothing
                await pool.post(f"{url}/v1/execute", b"{}", {})
        assert not any(pool._idle.values())  # the silent connection was closed, not kept
        pool.close()
    with pytest.raises(OSError):
        await http1.Pool(no_tls, connect_timeout=2).post(url + "/v1/execute", b"{}", {})


async def test_a_header_value_cannot_break_the_request_line() -> None:
    pool = http1.Pool(no_tls)
    with pytest.raises(ValueError, match="line break"):
        await pool.post("http://127.0.0.1:9/v1/execute", b"{}", {"Authorization": "Bearer x\r\nX-Evil: 1"})


async def test_a_connection_idle_past_keep_idle_is_not_used_again() -> None:
    """Workers close a connection idle for 5 s; the pool lets one go sooner, so no request races that close."""
    pool = http1.Pool(no_tls, keep_idle=0.2)
    server = Server(answering(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"))
    async with server as url:
        assert await (await pool.post(f"{url}/v1/execute", b"{}", {})).read() == b"ok"
        assert await (await pool.post(f"{url}/v1/execute", b"{}", {})).read() == b"ok"
        assert server.connections == 1
        await asyncio.sleep(0.3)
        assert await (await pool.post(f"{url}/v1/execute", b"{}", {})).read() == b"ok"
        assert server.connections == 2
    pool.close()
