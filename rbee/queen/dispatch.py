"""Dispatch: a request goes admit -> pick a worker -> open its stream -> relay, with one retry rule and one
cold-start wait for every path that streams (OpenAI streams and rbee tasks).

A worker that refuses as busy before any byte sends the request back to admission until its deadline; any other
failure is the client's 502, and a worker lost mid-request is not offered again. Every request leaves exactly
one record (metrics and the request log) and releases its admission ticket exactly once.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from rbee.api import audio as audio_wire
from rbee.api import sse, wire
from rbee.clients.worker import TAIL, Streamed, WorkerCallError, WorkerClient, WorkerStream
from rbee.queen import metrics
from rbee.queen.admission import Admission, Refusal, Ticket
from rbee.queen.auth import Key
from rbee.queen.autoscale import Autoscaler
from rbee.queen.errors import ClientError
from rbee.queen.fleet import Fleet
from rbee.queen.metering import Meter
from rbee.queen.metrics import Exchange, Metrics
from rbee.queen.providers import LOCAL
from rbee.queen.scheduling import Ask, Route

BUSY_RETRY = 0.005
"""Seconds before a request a busy worker refused goes back to admission."""
STALLED = 3.0
"""Seconds without a byte after which a stream to an unreachable hive is taken for cut off: a live worker sends
at least a keep-alive a second (worker/stream.py), so only a stream whose bytes stopped is cut."""

Answered = TypeVar("Answered")

OnError = Callable[[str, str], bytes]
"""The last bytes of a stream that failed, in the client's wire format: on_error(message, code)."""
Deliver = Callable[[bytes], Awaitable[None]]
"""Where a relay hands each chunk: the client's connection, a task's buffer."""


@dataclass(frozen=True, slots=True)
class Opened:
    """A worker's stream, accepted by its worker: the admission ticket it holds and its bytes to come."""

    ticket: Ticket
    chunks: WorkerStream

    def abandon(self, dispatch: Dispatcher) -> None:
        """The client left before the relay began: give the worker back and close its stream."""
        dispatch.streams.pop(self.chunks, None)
        self.ticket.release()
        self.chunks.close()


@dataclass(frozen=True, slots=True)
class Answer:
    """A generation read whole, for clients that did not ask for a stream."""

    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str
    logprobs: list[dict[str, Any]] | None = None
    """Each answer token's log probability and alternatives, when the request asked for them."""


class Dispatcher:
    def __init__(
        self,
        fleet: Fleet,
        admission: Admission,
        autoscale: Autoscaler,
        workers: WorkerClient,
        counters: Metrics,
        meter: Meter | None = None,
    ) -> None:
        self.fleet = fleet
        self.meter = meter
        """Where each request this fleet's workers served is metered (at queen.federation.local_price)."""
        self.admission = admission
        self.autoscale = autoscale
        self.workers = workers
        self.metrics = counters
        self.streams: dict[WorkerStream, tuple[Route, float]] = {}
        """Every stream open to a worker, with its route and how long it may go without a byte."""

    def watch(self) -> None:
        """End every stream whose worker sent nothing for longer than its idle timeout (called once a second: one
        sweep for all streams, not a timer per chunk, which cost a fifth of the relay's CPU)."""
        now = time.monotonic()
        for stream, (route, idle) in list(self.streams.items()):
            if now - stream.last > idle:
                message = f"worker {route.worker_id} on hive {route.hive} sent nothing for {idle:g} s"
                stream.abort(message, "worker_unresponsive")

    def abort_hive(self, hive: str, why: str) -> None:
        """End the streams to the workers of a hive that is no longer trusted to be up, at once rather than at
        their idle timeout: those that stalled (a host cut off). One whose bytes still flow is left to finish: its
        worker evidently answers, whatever its hive does (a frozen or restarting hive daemon)."""
        now = time.monotonic()
        for stream, (route, _) in list(self.streams.items()):
            if route.hive == hive and now - stream.last > STALLED:
                stream.abort(f"hive {hive} {why}", "hive_unreachable")

    def record(self, exchange: Exchange) -> None:
        """A request this fleet's workers served (or refused): counted, logged and metered."""
        metrics.record(self.metrics, exchange)
        providers = self.fleet.providers
        if exchange.first_byte is not None and exchange.status == 200 and providers.by_name:
            providers.answered_locally(exchange.model, exchange.first_byte - exchange.started)
        if self.meter is not None:
            settings = providers.settings
            tokens = (exchange.prompt_tokens, exchange.tokens)
            self.meter.add(
                exchange.key, LOCAL, exchange.model, tokens, settings.local_price, settings.margin, exchange.status
            )

    async def _admit(self, ask: Ask, key: Key | None, exchange: Exchange, deadline: float) -> Ticket:
        try:
            ticket = await self.admission.acquire(
                ask, max(0.0, deadline - time.monotonic()), key.max_concurrent if key else None
            )
        except Refusal as refusal:
            kind = {429: "rate_limit_error", 504: "timeout"}.get(refusal.status, "service_unavailable")
            raise ClientError(
                refusal.status, str(refusal), kind, refusal.reason, retry_after=refusal.retry_after
            ) from None
        exchange.worker, exchange.hive = ticket.route.worker_id, ticket.route.hive
        exchange.queued = ticket.queued_seconds
        return ticket

    async def _retry_or_raise(self, failure: WorkerCallError, ticket: Ticket, deadline: float) -> None:
        if failure.code == "client_error":  # the request is wrong for this model (a prompt past its context)
            raise ClientError(400, str(failure), code=failure.reason, param=failure.param) from None
        if failure.code == "worker_refused" and time.monotonic() < deadline:
            await asyncio.sleep(BUSY_RETRY)
            return
        if failure.code in ("worker_lost", "worker_unresponsive"):
            self.fleet.lost(ticket.route)
        if failure.code == "worker_unresponsive" and time.monotonic() < deadline:
            return  # nothing was sent yet: another worker may answer
        route = ticket.route
        raise ClientError(
            502, f"worker {route.worker_id} on hive {route.hive}: {failure}", "api_error", failure.code
        ) from None

    async def embed(self, ask: Ask, key: Key | None, body: wire.EmbedRequest, exchange: Exchange) -> dict[str, Any]:
        """An embedding request, recorded whatever happens."""
        return await self._call(ask, key, exchange, lambda route: self.workers.embed(route.url, route.credential, body))

    async def rerank(self, ask: Ask, key: Key | None, body: wire.RerankRequest, exchange: Exchange) -> dict[str, Any]:
        """A rerank request, recorded whatever happens."""
        return await self._call(
            ask, key, exchange, lambda route: self.workers.rerank(route.url, route.credential, body)
        )

    async def transcribe(
        self, ask: Ask, key: Key | None, body: audio_wire.TranscribeRequest, recording: bytes, exchange: Exchange
    ) -> dict[str, Any]:
        """A recording heard whole: `{"text", "language", "duration", "segments"}`, recorded whatever happens."""
        return await self._call(
            ask, key, exchange, lambda route: self.workers.transcribe(route.url, route.credential, body, recording)
        )

    async def count(self, ask: Ask, key: Key | None, body: wire.ExecuteRequest, exchange: Exchange) -> int:
        """How many tokens `body`'s prompt is, counted by a worker of its model (held like a request while the
        model starts)."""
        return await self._call(ask, key, exchange, lambda route: self.workers.count(route.url, route.credential, body))

    async def _call(
        self, ask: Ask, key: Key | None, exchange: Exchange, send: Callable[[Route], Awaitable[Answered]]
    ) -> Answered:
        """One JSON call to an admitted worker, retried on another while the deadline allows, and bounded by the
        model's request_timeout (a worker that took the request and went silent is not waited for forever)."""
        deadline = time.monotonic() + self.fleet.queue_wait
        limit = self.fleet.time_limit(ask.model)
        try:
            while True:
                ticket = await self._admit(ask, key, exchange, deadline)
                try:
                    async with asyncio.timeout(limit):
                        answer = await send(ticket.route)
                except TimeoutError:
                    route = ticket.route
                    raise ClientError(
                        504,
                        f"worker {route.worker_id} on hive {route.hive} did not answer within {limit:g} s (the model's "
                        "request_timeout)",
                        "timeout",
                        "worker_timeout",
                    ) from None
                except WorkerCallError as failure:
                    await self._retry_or_raise(failure, ticket, deadline)
                    continue
                finally:
                    ticket.release()
                exchange.first_byte = time.monotonic()
                return answer
        except ClientError as refusal:
            exchange.failed(refusal.status, str(refusal))
            raise
        finally:
            self.record(exchange)

    async def open(self, ask: Ask, key: Key | None, body: Streamed, exchange: Exchange) -> Opened:
        """Admit the request and open its worker's stream, until the worker accepts it (the headers of its answer:
        the client's answer starts then, while the worker makes its first token). A refusal is recorded like any
        finished request."""
        deadline = time.monotonic() + self.fleet.queue_wait
        limit = self.fleet.time_limit(ask.model)  # the worker ends an answer that runs past it
        if isinstance(body, wire.ExecuteRequest) and limit is not None and (body.time_limit or limit + 1) > limit:
            body = body.model_copy(update={"time_limit": limit})
        try:
            while True:
                ticket = await self._admit(ask, key, exchange, deadline)
                chunks = self.workers.stream(ticket.route.url, ticket.route.credential, body)
                idle = self.fleet.stream_idle(ask.model)
                try:
                    async with asyncio.timeout(idle):
                        await chunks.accept()
                except TimeoutError:
                    ticket.release()
                    chunks.close()
                    message = f"the worker sent nothing for {idle:g} s"
                    await self._retry_or_raise(WorkerCallError(message, "worker_unresponsive"), ticket, deadline)
                    continue
                except WorkerCallError as failure:
                    ticket.release()
                    await self._retry_or_raise(failure, ticket, deadline)
                    continue
                except BaseException:
                    ticket.release()
                    chunks.close()
                    raise
                self.streams[chunks] = (ticket.route, idle)
                return Opened(ticket, chunks)
        except ClientError as refusal:
            exchange.failed(refusal.status, str(refusal))
            self.record(exchange)
            raise

    async def opening(
        self, ask: Ask, key: Key | None, body: Streamed, exchange: Exchange
    ) -> AsyncGenerator[bytes | Opened, None]:
        """`open`, for a client that is already being answered: while a cold start runs, its progress as an SSE
        comment every second, then the opened stream (a refusal raises ClientError). Use it in `aclosing`."""
        opening = asyncio.ensure_future(self.open(ask, key, body, exchange))
        handed = False
        try:
            await asyncio.wait({opening}, timeout=0.01)  # admission runs first, and starts the worker
            while not opening.done():
                start = self.autoscale.starting.get(ask.model)
                if start is not None:
                    yield start.comment()
                await asyncio.wait({opening}, timeout=1.0)
            opened = opening.result()
            handed = True
            yield opened
        finally:
            if not opening.done():
                opening.cancel()
            elif not handed and not opening.cancelled() and opening.exception() is None:
                opening.result().abandon(self)

    async def relay(
        self, exchange: Exchange, opened: Opened, deliver: Deliver, on_error: OnError | None = None
    ) -> None:
        """Pass the worker's bytes through to `deliver`. A stream in a client's wire format (`on_error` given) ends
        with its worker's end comment, or with an error in that format when the worker fails. Bytes with no end
        marker (audio) end when the worker's answer ends whole; a worker lost mid-answer raises, so the client's
        answer is cut off too: a truncated file never looks whole."""
        ticket, stream = opened.ticket, opened.chunks
        finished = False
        try:
            try:
                await stream.pump(deliver)
            except WorkerCallError as failure:
                finished = True
                self._lost(exchange, ticket, f"worker {ticket.route.worker_id} on hive {ticket.route.hive}: {failure}")
                if on_error is None:
                    raise
                await deliver(on_error(str(exchange.error), failure.code))
                return
            finished = True
            if on_error is None:
                return
            end = wire.parse_end(b"".join(stream.tail), stream_start=stream.count <= TAIL)
            if end is None:
                self._lost(exchange, ticket, "the worker ended the stream without finishing")
                await deliver(on_error(str(exchange.error), "worker_lost"))
            else:
                exchange.tokens = int(end.get("completion_tokens", 0))
                exchange.prompt_tokens = int(end.get("prompt_tokens", 0))
                exchange.cached_tokens = int(end.get("cached_tokens", 0))
                if end.get("error"):
                    exchange.failed(502, str(end["error"]))
        finally:
            exchange.first_byte = stream.first
            self.streams.pop(stream, None)
            if not finished:
                exchange.failed(499, "the client went away")
                stream.close()
            ticket.release()
            self.record(exchange)

    def abandon(self, exchange: Exchange, opened: Opened) -> None:
        """A relay that will not run (another choice of its request was refused): its worker given back."""
        opened.abandon(self)
        exchange.failed(499, "the request was given up before its answer began")
        self.record(exchange)

    async def gather(self, ask: Ask, key: Key | None, body: Streamed, exchange: Exchange) -> bytes:
        """A worker's stream read to its end, for a client that wants its answer at once; recorded (a stream
        that ended without its end comment, or with an error in it, as failed). A broken stream is the client's
        502; an error event in it is left for the caller to read."""
        opened = await self.open(ask, key, body, exchange)
        parts: list[bytes] = []

        async def keep(chunk: bytes) -> None:
            parts.append(chunk)

        end: dict[str, Any] | None = None
        try:
            await opened.chunks.pump(keep)
            buffer = b"".join(parts)  # joined once: adding chunk by chunk was quadratic in the answer's length
            end = wire.parse_end(buffer, stream_start=True)
            if end is None:
                exchange.failed(502, "the worker ended the stream without finishing")
            elif end.get("error"):
                exchange.failed(502, str(end["error"]))
            else:
                exchange.tokens = int(end.get("completion_tokens", 0))
                exchange.prompt_tokens = int(end.get("prompt_tokens", 0))
                exchange.cached_tokens = int(end.get("cached_tokens", 0))
        except WorkerCallError as failure:
            exchange.failed(502, str(failure))
            raise ClientError(502, str(failure), "api_error", failure.code) from None
        finally:
            exchange.first_byte = opened.chunks.first
            self.streams.pop(opened.chunks, None)
            opened.chunks.close()
            opened.ticket.release()
            self.record(exchange)
        if end is None:
            raise ClientError(502, "the worker ended the stream without finishing", "api_error", "worker_lost")
        return buffer

    async def answer(self, ask: Ask, key: Key | None, body: wire.ExecuteRequest, exchange: Exchange) -> Answer:
        """The whole generation at once (the worker streams rbee events; they are read to the end here)."""
        buffer = await self.gather(ask, key, body.model_copy(update={"format": wire.StreamFormat.RBEE}), exchange)
        text: list[str] = []
        logprobs: list[dict[str, Any]] | None = [] if body.logprobs is not None else None
        for event in sse.Parser().feed(buffer):
            if event.name == "error":
                raise ClientError(502, str(json.loads(event.data)["error"]), "api_error", "generation_failed")
            if event.data:
                data = event.json()
                if "token" in data:
                    text.append(data["token"])
                    if logprobs is not None:
                        logprobs.extend(data.get("logprobs") or ())
        end = wire.parse_end(buffer, stream_start=True) or {}
        return Answer(
            "".join(text),
            int(end["prompt_tokens"]),
            int(end["completion_tokens"]),
            str(end.get("finish_reason")),
            logprobs,
        )

    def _lost(self, exchange: Exchange, ticket: Ticket, message: str) -> None:
        exchange.failed(502, message)
        self.fleet.lost(ticket.route)
