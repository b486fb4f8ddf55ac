"""A worker's HTTP API as the queen and the hive call it: one pooled aiohttp session to every worker for its JSON
calls, and for its streams the lean client of clients/http1.py (what comes before a relayed request's first token).

`stream` passes a worker's bytes through untouched (the worker already wrote the client's wire format), so the
queen relays them without parsing each event. Keep-alive with no pool limit relayed 1,000 concurrent streams
where a shared httpx client collapsed (FACTS.md).
"""

from __future__ import annotations

import json
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import pydantic

from rbee.api import audio as audio_wire
from rbee.api import image_generation as images
from rbee.api import wire
from rbee.clients import http1, tls

Streamed = wire.ExecuteRequest | audio_wire.SpeakRequest | images.ImageRequest
"""The requests a worker answers as a stream."""
TAIL = 8
"""Chunks of a stream kept to find its end comment in."""
KEEP_IDLE = 4.0
"""Seconds an idle connection to a worker is used again: less than the 5 s after which a worker (uvicorn) closes
one, so a request never goes out on a connection its worker is closing (the worker would look lost)."""


class WorkerCallError(Exception):
    """The worker refused, failed or went away; the message is safe to show a client. `code` is
    `worker_refused` (busy or loading, before any byte), `worker_error` (it answered an error), `worker_lost`
    (the connection broke), or `client_error` (the request itself is wrong: `param` names the field)."""

    def __init__(
        self, message: str, code: str = "worker_error", param: str | None = None, reason: str | None = None
    ) -> None:
        super().__init__(message)
        self.code, self.param, self.reason = code, param, reason


class WorkerClient:
    """Each request carries the credential of the worker it goes to (a worker's opens only that worker)."""

    def __init__(self) -> None:
        self._session: aiohttp.ClientSession | None = None
        self._streams = http1.Pool(tls.context, keep_idle=KEEP_IDLE)

    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=60, ssl=tls.context())
            # No read timeout: aiohttp re-arms a timer on every chunk when there is one, which cost a fifth of the
            # relay's CPU. A worker that dies closes its connection; one that hangs is stopped by its hive.
            timeout = aiohttp.ClientTimeout(total=None, sock_connect=5, sock_read=None)
            self._session = aiohttp.ClientSession(connector=connector, timeout=timeout)
        return self._session

    async def close(self) -> None:
        self._streams.close()
        if self._session is not None:
            session, self._session = self._session, None
            await session.close()

    def stream(self, url: str, credential: str | None, body: Streamed) -> WorkerStream:
        """The worker's response bytes as they arrive (a generation's events, speech's audio, a painting's
        progress and pictures)."""
        return WorkerStream(self._streams, url, credential, body)

    async def embed(self, url: str, credential: str | None, body: wire.EmbedRequest) -> dict[str, Any]:
        """An embedding request: `{"embeddings", "prompt_tokens"}`."""
        return await self._post(f"{url}/v1/execute", credential, body)

    async def rerank(self, url: str, credential: str | None, body: wire.RerankRequest) -> dict[str, Any]:
        """A rerank request: `{"scores", "prompt_tokens"}`, a score per document in their order."""
        return await self._post(f"{url}/v1/execute", credential, body)

    async def transcribe(
        self, url: str, credential: str | None, body: audio_wire.TranscribeRequest, recording: bytes
    ) -> dict[str, Any]:
        """A transcription: `{"text", "language", "duration", "segments"}`. The recording goes as its own bytes,
        framed with the request (audio.framed), not as base64 in JSON."""
        data = audio_wire.framed(body, recording)
        return await self._post(f"{url}/v1/execute", credential, data, audio_wire.FRAMED)

    async def count(self, url: str, credential: str | None, body: wire.ExecuteRequest) -> int:
        """How many tokens the request's prompt is, by the worker's tokenizer."""
        answer = await self._post(f"{url}/v1/count", credential, body)
        return int(answer["input_tokens"])

    async def _post(
        self, url: str, credential: str | None, body: pydantic.BaseModel | bytes, kind: str = "application/json"
    ) -> dict[str, Any]:
        headers = {**_headers(credential), "Content-Type": kind}
        data = body if isinstance(body, bytes) else body.model_dump_json()
        try:
            async with self.session().post(url, data=data, headers=headers) as response:
                text = await response.text()
                if response.status != 200:
                    raise _refusal(response.status, text)
                answer: dict[str, Any] = json.loads(text)
                return answer
        except (aiohttp.ClientError, TimeoutError, ConnectionError) as error:
            raise _lost(error) from None

    async def healthy(self, url: str, seconds: float) -> bool:
        """Whether the worker answers `GET /health` within `seconds`."""
        try:
            async with self.session().get(f"{url}/health", timeout=aiohttp.ClientTimeout(total=seconds)) as response:
                return response.status == 200
        except (aiohttp.ClientError, TimeoutError, ConnectionError):
            return False

    async def shutdown(self, url: str, credential: str | None, seconds: float = 2.0) -> bool:
        """Ask a worker to stop; False when it could not be asked."""
        try:
            async with self.session().post(
                f"{url}/v1/admin/shutdown", headers=_headers(credential), timeout=aiohttp.ClientTimeout(total=seconds)
            ) as response:
                return response.status == 202
        except (aiohttp.ClientError, TimeoutError, ConnectionError):
            return False


class WorkerStream:
    """One streamed generation: accepted by its worker (`accept`: the headers of its answer), then its bytes
    handed on as they arrive (`pump`), with when the first and the last came and the last few (the end comment is
    there), and a way to end it from outside (a worker that stopped sending, a hive that went away): the pump
    then raises WorkerCallError with the reason."""

    def __init__(self, pool: http1.Pool, url: str, credential: str | None, body: Streamed) -> None:
        self.last = time.monotonic()
        """When the last bytes came (or the request went)."""
        self.first: float | None = None
        """When the first bytes came."""
        self.tail: deque[bytes] = deque(maxlen=TAIL)
        self.count = 0
        """Chunks so far: with no more than TAIL, the tail holds the stream from its start."""
        self.aborted: WorkerCallError | None = None
        self._request = pool, url, credential, body
        self._response: http1.Response | None = None

    async def accept(self) -> None:
        """Send the request and wait for the worker's answer to begin; WorkerCallError when it refuses."""
        pool, url, credential, body = self._request
        try:
            response = await pool.post(f"{url}/v1/execute", body.model_dump_json().encode(), _headers(credential))
            if response.status != 200:
                try:
                    raise _refusal(response.status, (await response.read()).decode(errors="replace"))
                finally:
                    response.close()
        except (TimeoutError, OSError) as error:  # ConnectionError (http1.Broken) is an OSError
            raise _lost(error) from None
        self._response, self.last = response, time.monotonic()

    async def pump(self, deliver: Callable[[bytes], Awaitable[None]]) -> None:
        """Hand every chunk to `deliver` as it comes, to the end of the stream. One loop straight over the
        connection: two generators in its way (this one's and the relay's) cost a tenth of the queen's CPU at 1,000
        streams."""
        assert self._response is not None, "accept first"
        tail = self.tail
        try:
            async for chunk in self._response:
                self.last = time.monotonic()
                if not self.count:
                    self.first = self.last
                self.count += 1
                tail.append(chunk)
                await deliver(chunk)
        except (TimeoutError, OSError) as error:
            raise self.aborted or _lost(error) from None
        if self.aborted is not None:
            raise self.aborted

    def header(self, name: str) -> str | None:
        """A header of the worker's answer, once it accepted."""
        return self._response.headers.get(name.lower()) if self._response is not None else None

    def close(self) -> None:
        """Let the stream go: a finished one's connection is back in the pool already; an unfinished one's closes,
        which tells its worker to stop."""
        if self._response is not None:
            self._response.close()

    def abort(self, message: str, code: str) -> None:
        """End the stream now: its connection closes, and the pump raises with this reason."""
        if self.aborted is None:
            self.aborted = WorkerCallError(message, code)
            self.close()


def _headers(credential: str | None) -> dict[str, str]:
    return {"Content-Type": "application/json", **wire.bearer(credential)}


def _refusal(status: int, body: str) -> WorkerCallError:
    message = _message(body) or f"the worker answered HTTP {status}"
    if status == 400:
        return WorkerCallError(message, "client_error", _field(body, "param"), _field(body, "code"))
    return WorkerCallError(message, "worker_refused" if status == 503 else "worker_error")


def _field(body: str, name: str) -> str | None:
    try:
        error = json.loads(body).get("error")
    except (ValueError, AttributeError):
        return None
    value = error.get(name) if isinstance(error, dict) else None
    return str(value) if value is not None else None


def _lost(error: BaseException) -> WorkerCallError:
    return WorkerCallError(f"the worker went away mid-request ({type(error).__name__})", "worker_lost")


def _message(body: str) -> str | None:
    try:
        data = json.loads(body)
    except ValueError:
        return None
    error = data.get("error") if isinstance(data, dict) else None
    if isinstance(error, dict):
        return str(error.get("message"))
    return str(error) if error else None
