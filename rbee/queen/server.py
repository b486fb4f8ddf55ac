"""The queen daemon: `rbee queen serve`.

Clients: GET /v1/models, POST /v1/chat/completions, POST /v1/completions (OpenAI-compatible), and rbee's task
API POST /v2/tasks, GET /v2/tasks/{id}/events, DELETE /v2/tasks/{id}; GET /metrics, GET /openapi.json.
Operators (cluster token): PUT /v2/spec, PUT /v2/reconcile (suspend/resume), GET /v2/status, GET /v2/route,
GET /v2/events, POST /v2/admin/shutdown; hives (cluster token): POST /v2/heartbeat.
GET /health is open.

Streams are passed through: the worker writes the wire format the client asked for, and the queen relays its
bytes, looking only for the `: rbee-end` comment that carries the token counts.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import os
import signal
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pydantic
import uvicorn
from starlette import routing
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from rbee import __version__, aio
from rbee.api import openai as oai
from rbee.api import wire
from rbee.api.state import HiveObservation, HiveState, HiveStatus, ObservedState
from rbee.observe import hives as observe_hives
from rbee.queen import docs
from rbee.queen.admission import Admission, Refusal, Ticket
from rbee.queen.autoscale import Autoscaler
from rbee.queen.heartbeats import MISSED, Heartbeats
from rbee.queen.metrics import Metrics
from rbee.queen.reconcile import Reconciler
from rbee.queen.registry import Registry
from rbee.queen.relay import Upstream, UpstreamError
from rbee.queen.scheduling import Ask, Policy, PolicyError, PolicyKind, Route
from rbee.queen.store import Store
from rbee.spec.schema import HiveFile

log = logging.getLogger("rbee.queen")
request_log = logging.getLogger("rbee.requests")
Handler = Callable[[Request], Awaitable[Response]]
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
MAX_TASKS = 1000
SEEN_EVERY = 60.0
"""Seconds between two SQLite writes of "hive X answered": the registry refreshes every second."""


class ClientError(Exception):
    """A request refused before any work: an HTTP status and an OpenAI-shaped body."""

    def __init__(
        self,
        status: int,
        message: str,
        kind: str = "invalid_request_error",
        code: str | None = None,
        param: str | None = None,
        retry_after: int | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.kind, self.code, self.param, self.retry_after = status, kind, code, param, retry_after

    def response(self) -> JSONResponse:
        headers = {"Retry-After": str(self.retry_after)} if self.retry_after is not None else None
        return JSONResponse(oai.error(str(self), self.kind, self.code, self.param), self.status, headers=headers)


@dataclass
class Key:
    name: str
    models: tuple[str, ...] | None
    max_concurrent: int | None


@dataclass
class Exchange:
    """One request's record: what the request log line and the metrics say about it."""

    id: str
    model: str
    key: str | None
    started: float = field(default_factory=time.monotonic)
    first_byte: float | None = None
    worker: str | None = None
    hive: str | None = None
    queued: float = 0.0
    status: int = 200
    tokens: int = 0
    error: str | None = None


@dataclass
class Task:
    id: str
    model: str
    chunks: list[bytes] = field(default_factory=list)
    finished: bool = False
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    runner: asyncio.Task[None] | None = None

    def add(self, chunk: bytes, final: bool = False) -> None:
        self.chunks.append(chunk)
        self.finished = self.finished or final
        self.changed.set()
        self.changed = asyncio.Event()


class Queen:
    def __init__(
        self,
        state_dir: Path,
        token: str | None,
        poll_interval: float = 1.0,
        queue_wait: float | None = None,
        listen: str | None = None,
    ) -> None:
        self.store = Store(state_dir / "queen.db")
        self.token = token
        self.poll_interval = poll_interval
        self.queue_wait_override = queue_wait
        self.registry = Registry()
        self.admission = Admission()
        self.metrics = Metrics(self.admission)
        self.upstream = Upstream(token)
        self.observer: aiohttp.ClientSession | None = None
        self.tasks: dict[str, Task] = {}
        self.keys: dict[str, Key] = {}
        self.server: uvicorn.Server | None = None
        self.event_added = asyncio.Event()
        self._events_logged = 0
        self._recorded: dict[str, float] = {}
        self.heartbeats = Heartbeats(listen)
        self.beating: set[str] = set()
        self._tasks: set[asyncio.Task[Any]] = set()
        self.reconciler = Reconciler(
            lambda: (self.generation, self.spec),
            token,
            state_dir,
            state_dir.parent / "wheels",
            self.event,
            self.store.seen_hives,
            self._saw,
            lambda: self.autoscale.settle(),
        )
        self.autoscale = Autoscaler(lambda: self.spec, self.registry, self.admission, token, self.refresh, self.event)
        self.admission.wake = self.autoscale.wake
        current = self.store.current_spec()
        self.generation: int = current[0] if current else 0
        self.spec: HiveFile | None = current[1] if current else None
        self.policy_source: str | None = self.store.policy_source()
        if self.spec is not None:
            self._configure(self.spec)
            self.registry.restore(self.store.workers())
            self.admission.sync(self.registry.routes.values())

    @property
    def queue_wait(self) -> float:
        if self.queue_wait_override is not None:
            return self.queue_wait_override
        return self.spec.queen.queue_timeout if self.spec else 30.0

    @property
    def max_body(self) -> int:
        return self.spec.queen.max_body_bytes if self.spec else 4 << 20

    def _configure(self, spec: HiveFile) -> None:
        keys: dict[str, Key] = {}
        for ref in spec.queen.api_keys:
            value = os.environ.get(ref.env)
            if value:
                keys[value] = Key(ref.env, ref.models, ref.max_concurrent)
            else:
                log.warning("API key variable %s is not set in the queen's environment; that key is refused", ref.env)
        self.keys = keys
        self.registry.spec = spec
        self.admission.max_queue = spec.queen.max_queue
        self.admission.policy = make_policy(spec.queen.routing, self.policy_source)

    def set_spec(self, spec: HiveFile, source: str, policy_source: str | None = None) -> tuple[int, bool]:
        if spec.queen.routing.endswith(".py"):
            make_policy(spec.queen.routing, policy_source)  # refuse a bad policy before storing anything
        generation, changed = self.store.apply_spec(spec, source)
        self.store.set_policy_source(policy_source)
        self.generation, self.spec, self.policy_source = generation, spec, policy_source
        self._configure(spec)
        self.event_added.set()
        self.event_added = asyncio.Event()
        self.reconciler.spec_changed(generation)
        return generation, changed

    def event(self, kind: str, target: str, message: str) -> None:
        """One line of the event log, and a wake-up for whoever follows it. The log keeps the newest 100,000."""
        self.store.log(kind, target, message)
        self._events_logged += 1
        if self._events_logged % 1000 == 0:
            self.store.prune_events(100_000)
        self.event_added.set()
        self.event_added = asyncio.Event()

    def _saw(self, observed: ObservedState) -> None:
        """Remember (in SQLite, at most once a minute per hive) which hives answered; distrust the last beat of
        those that did not."""
        now = time.monotonic()
        for hive in observed.hives:
            if hive.state is not None:
                if now - self._recorded.get(hive.name, -SEEN_EVERY) >= SEEN_EVERY:
                    self.store.saw_hive(hive.name)
                    self._recorded[hive.name] = now
            else:
                self.heartbeats.distrust(hive.name)  # its last beat is no longer the truth: poll it

    def lost(self, route: Route) -> None:
        """A worker broke mid-request: stop offering it, and poll its hive rather than trust its last beat."""
        self.registry.forget(route)
        self.heartbeats.distrust(route.hive)

    async def refresh(self) -> None:
        """Bring the registry up to date: hives that beat are taken from their last heartbeat; the others are
        polled, and those that answer are asked to send heartbeats."""
        spec = self.spec
        if spec is None:
            return
        if self.observer is None:
            self.observer = observe_hives.make_client(self.token, len(spec.hives))
        now, interval = time.monotonic(), spec.queen.heartbeat_interval
        beating = {hive.name for hive in spec.hives if self.heartbeats.fresh(hive.name, interval, now)}
        for name in self.beating - beating:
            silence = self.heartbeats.silent_for(name, now) or 0.0
            what = f"missed {MISSED} heartbeats" if silence >= MISSED * interval else "stopped answering"
            self.event("heartbeat", name, f"{what} (last {silence:.0f} s ago); polling it, and reconciling")
            self.reconciler.request()
        silent = spec.model_copy(update={"hives": tuple(h for h in spec.hives if h.name not in beating)})
        polled = await observe_hives.observe_async(silent, timeout=2.0, client=self.observer)
        found = {hive.name: hive for hive in polled.hives}
        for name in beating:
            found[name] = HiveObservation(
                name=name, status=HiveStatus.RUNNING, installed=True, state=self.heartbeats.beats[name].state
            )
        for observation in polled.hives:
            quiet = self.heartbeats.silent_for(observation.name, now)
            if quiet is not None and observation.status is not HiveStatus.RUNNING:
                reason = f"no heartbeat for {quiet:.0f} s; {observation.reason}"
                found[observation.name] = observation.model_copy(update={"reason": reason})
            hive = spec.hive(observation.name)
            if observation.status is HiveStatus.RUNNING and hive and self.heartbeats.due(hive.name, interval, now):
                self._background(self.heartbeats.subscribe(self.observer, hive, interval))
        self.beating = beating
        self._observed(spec, ObservedState(hives=tuple(found[hive.name] for hive in spec.hives)))

    def heartbeat(self, state: HiveState) -> None:
        """A hive's beat: its state goes into the registry at once (a new worker is routable now)."""
        spec = self.spec
        if spec is None or spec.hive(state.name) is None:
            raise KeyError(state.name)
        self.heartbeats.record(state)
        self.beating.add(state.name)
        beat = HiveObservation(name=state.name, status=HiveStatus.RUNNING, installed=True, state=state)
        earlier = self.registry.observed.hives if self.registry.observed else ()
        merged = {hive.name: hive for hive in earlier} | {state.name: beat}
        self._saw(ObservedState(hives=(beat,)))
        merged_state = ObservedState(hives=tuple(merged[h.name] for h in spec.hives if h.name in merged))
        self._observed(spec, merged_state, saw=False)

    def _observed(self, spec: HiveFile, observed: ObservedState, saw: bool = True) -> None:
        if saw:
            self._saw(observed)
        before = self.registry.snapshot()
        self.registry.update(spec, observed)
        self.admission.sync(self.registry.routes.values())
        after = self.registry.snapshot()
        if after != before:
            self.store.replace_workers(after)
            self.event("registry", "workers", f"{len(after)} workers routable")

    def _background(self, work: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def poll(self) -> None:
        while True:
            try:
                await self.refresh()
                self.autoscale.park_idle()
            except Exception:
                log.exception("refreshing the registry failed")
            await asyncio.sleep(self.poll_interval)

    def authorize(self, request: Request, model: str | None) -> Key | None:
        if not self.keys and not (self.spec and self.spec.queen.api_keys):
            return None
        given = request.headers.get("authorization", "").removeprefix("Bearer ").strip().encode()
        for value, key in self.keys.items():
            if hmac.compare_digest(given, value.encode()):
                if model is not None and key.models is not None and model not in key.models:
                    raise ClientError(
                        403, f"this API key may not use model {model}", "permission_error", "model_not_allowed", "model"
                    )
                return key
        raise ClientError(
            401,
            "a valid API key is required: send Authorization: Bearer <key>",
            "authentication_error",
            "invalid_api_key",
        )

    async def admit(self, ask: Ask, key: Key | None, deadline: float) -> Ticket:
        try:
            return await self.admission.acquire(
                ask, max(0.0, deadline - time.monotonic()), key.max_concurrent if key else None
            )
        except Refusal as refusal:
            kind = {429: "rate_limit_error", 504: "timeout"}.get(refusal.status, "service_unavailable")
            raise ClientError(
                refusal.status, str(refusal), kind, refusal.reason, retry_after=refusal.retry_after
            ) from None

    async def _admit_for(self, ask: Ask, key: Key | None, exchange: Exchange, deadline: float) -> Ticket:
        ticket = await self.admit(ask, key, deadline)
        exchange.worker, exchange.hive = ticket.route.worker_id, ticket.route.hive
        exchange.queued = ticket.queued_seconds
        return ticket

    async def _retry_or_raise(self, failure: UpstreamError, ticket: Ticket, deadline: float) -> None:
        """A worker that refused as busy (the registry saw it a moment ago) sends the request back to wait, until
        its deadline; any other failure is the client's 502, and a lost worker is not offered again."""
        if failure.code == "worker_refused" and time.monotonic() < deadline:
            await asyncio.sleep(0.005)
            return
        if failure.code == "worker_lost":
            self.lost(ticket.route)
        route = ticket.route
        raise ClientError(
            502, f"worker {route.worker_id} on hive {route.hive}: {failure}", "api_error", failure.code
        ) from None

    async def embed(self, ask: Ask, key: Key | None, texts: list[str], exchange: Exchange) -> dict[str, Any]:
        deadline = time.monotonic() + self.queue_wait
        while True:
            ticket = await self._admit_for(ask, key, exchange, deadline)
            try:
                answer = await self.upstream.call(
                    ticket.route.url, {"request_id": exchange.id, "input": texts, "encoding": "base64"}
                )
            except UpstreamError as failure:
                await self._retry_or_raise(failure, ticket, deadline)
                continue
            finally:
                ticket.release()
            exchange.first_byte = time.monotonic()
            return answer

    async def open_stream(
        self, ask: Ask, key: Key | None, body: dict[str, Any], exchange: Exchange
    ) -> tuple[Ticket, bytes, AsyncIterator[bytes]]:
        """Admit the request, open its worker's stream and read the first bytes."""
        deadline = time.monotonic() + self.queue_wait
        while True:
            ticket = await self._admit_for(ask, key, exchange, deadline)
            chunks = self.upstream.stream(ticket.route.url, body)
            try:
                first = await anext(chunks)
            except UpstreamError as failure:
                ticket.release()
                await self._retry_or_raise(failure, ticket, deadline)
                continue
            except StopAsyncIteration:
                ticket.release()
                raise ClientError(502, "the worker sent nothing", "api_error", "worker_lost") from None
            except BaseException:
                ticket.release()
                raise
            exchange.first_byte = time.monotonic()
            return ticket, first, chunks

    async def relay(
        self,
        exchange: Exchange,
        ticket: Ticket,
        first: bytes,
        chunks: AsyncIterator[bytes],
        on_error: Callable[[str, str], bytes],
    ) -> AsyncIterator[bytes]:
        """Pass the worker's bytes through; end with an error in the client's format if the worker fails."""
        last: deque[bytes] = deque([first], maxlen=8)  # references only: the end comment is in the last chunks
        finished = False
        try:
            yield first
            async for chunk in chunks:
                yield chunk
                last.append(chunk)
            finished = True
            end = wire.parse_end(b"".join(last))
            if end is None:
                self._fail(exchange, ticket, "the worker ended the stream without finishing")
                yield on_error(str(exchange.error), "worker_lost")
            else:
                exchange.tokens = int(end.get("completion_tokens", 0))
                if end.get("error"):
                    exchange.status, exchange.error = 502, str(end["error"])
        except UpstreamError as failure:
            finished = True
            self._fail(exchange, ticket, f"worker {ticket.route.worker_id} on hive {ticket.route.hive}: {failure}")
            yield on_error(str(exchange.error), failure.code)
        finally:
            if not finished:
                exchange.status, exchange.error = 499, "the client went away"
                asyncio.get_running_loop().create_task(_close(chunks))
            ticket.release()
            self.record(exchange)

    def _fail(self, exchange: Exchange, ticket: Ticket, message: str) -> None:
        exchange.status, exchange.error = 502, message
        self.lost(ticket.route)

    def record(self, exchange: Exchange) -> None:
        now = time.monotonic()
        model = exchange.model
        self.metrics.requests.labels(model, str(exchange.status)).inc()
        if exchange.tokens:
            self.metrics.tokens.labels(model).inc(exchange.tokens)
        if exchange.first_byte is not None:
            self.metrics.ttft.labels(model).observe(exchange.first_byte - exchange.started)
            if exchange.tokens > 1:
                self.metrics.token_latency.labels(model).observe((now - exchange.first_byte) / (exchange.tokens - 1))
        request_log.info(
            json.dumps(
                {
                    "id": exchange.id,
                    "model": model,
                    "key": exchange.key,
                    "hive": exchange.hive,
                    "worker": exchange.worker,
                    "status": exchange.status,
                    "tokens": exchange.tokens,
                    "queued_ms": round(exchange.queued * 1000, 2),
                    "ttft_ms": round((exchange.first_byte - exchange.started) * 1000, 2)
                    if exchange.first_byte
                    else None,
                    "duration_ms": round((now - exchange.started) * 1000, 2),
                    "error": exchange.error,
                }
            )
        )


async def _close(chunks: AsyncIterator[bytes]) -> None:
    with contextlib.suppress(Exception):
        await chunks.aclose()  # type: ignore[attr-defined]


class RelayResponse(Response):
    """A stream relayed chunk by chunk straight to the server's `send` (see `RawSend`), with a watcher that
    cancels the relay the moment the client disconnects, so its worker stops within a token."""

    def __init__(self, chunks: AsyncIterator[bytes]) -> None:
        self.status_code = 200
        self.background = None
        self.raw_headers = [
            (b"content-type", b"text/event-stream; charset=utf-8"),
            (b"cache-control", b"no-cache"),
            (b"x-accel-buffering", b"no"),
        ]
        self.chunks = chunks

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        send = scope.get("rbee.send", send)
        await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
        task = asyncio.current_task()
        assert task is not None
        gone = False

        async def watch() -> None:
            nonlocal gone
            while (await receive())["type"] != "http.disconnect":
                pass
            gone = True
            task.cancel()

        watcher = asyncio.ensure_future(watch())
        try:
            async for chunk in self.chunks:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        except asyncio.CancelledError:
            if not gone:
                raise
            task.uncancel()
        finally:
            watcher.cancel()


class RawSend:
    """Hands relayed responses the server's own `send`, past the per-message wrappers of Starlette's
    middleware: a quarter of the relay's CPU per token went there."""

    def __init__(self, app: Starlette) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            scope["rbee.send"] = send
        await self.app(scope, receive, send)


def _event_sse(item: dict[str, Any]) -> bytes:
    return f"id: {item['id']}\ndata: {json.dumps(item)}\n\n".encode()


def _last_event_id(queen: Queen) -> int:
    newest = queen.store.events(1)
    return int(newest[-1]["id"]) if newest else 0


def make_policy(routing_name: str, source: str | None) -> Policy:
    if routing_name == "round-robin":
        return Policy(PolicyKind.ROUND_ROBIN)
    if routing_name.endswith(".py"):
        if source is None:
            raise PolicyError(f"the routing policy {routing_name} was not sent with the spec")
        return Policy(PolicyKind.FILE, source, Path(routing_name).name)
    return Policy()


def create_app(queen: Queen) -> RawSend:
    def operator(handler: Handler) -> Handler:
        async def check(request: Request) -> Response:
            if queen.token is not None:
                given = request.headers.get("authorization", "")
                if not hmac.compare_digest(given.encode(), f"Bearer {queen.token}".encode()):
                    return JSONResponse(wire.error_body("missing or wrong cluster token", "unauthorized"), 401)
            return await handler(request)

        return check

    def client(handler: Handler) -> Handler:
        async def guard(request: Request) -> Response:
            try:
                return await handler(request)
            except ClientError as refusal:
                return refusal.response()

        return guard

    async def read_body(request: Request) -> Any:
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > queen.max_body:
            raise ClientError(413, f"the body is larger than {queen.max_body} bytes", code="body_too_large")
        raw = b""
        async for part in request.stream():
            raw += part
            if len(raw) > queen.max_body:
                raise ClientError(413, f"the body is larger than {queen.max_body} bytes", code="body_too_large")
        try:
            return json.loads(raw)
        except ValueError:
            raise ClientError(400, "the body must be a JSON object", code="invalid_json") from None

    def validation_error(failure: pydantic.ValidationError) -> ClientError:
        item = failure.errors()[0]
        param = ".".join(str(part) for part in item["loc"])
        message = str(item["msg"]).removeprefix("Value error, ")
        return ClientError(400, f"{param}: {message}" if param else message, param=param or None)

    async def health(request: Request) -> Response:
        return JSONResponse({"status": "ok", "version": __version__, "generation": queen.generation})

    async def list_models(request: Request) -> Response:
        queen.authorize(request, None)
        data = [{"id": name, "object": "model", "created": 0, "owned_by": "rbee"} for name in queen.registry.models()]
        return JSONResponse({"object": "list", "data": data})

    async def openai_endpoint(request: Request, chat: bool) -> Response:
        raw = await read_body(request)
        if not isinstance(raw, dict):
            raise ClientError(400, "the body must be a JSON object", code="invalid_json")
        try:
            body: oai.ChatRequest | oai.CompletionRequest = (
                oai.ChatRequest.model_validate(raw) if chat else oai.CompletionRequest.model_validate(raw)
            )
        except pydantic.ValidationError as failure:
            raise validation_error(failure) from None
        key = queen.authorize(request, body.model)
        if not queen.registry.knows(body.model):
            raise ClientError(404, f"the model {body.model} does not exist", code="model_not_found", param="model")
        if model_kind(body.model) == "embedding":
            raise ClientError(
                400,
                f"the model {body.model} is an embedding model; use /v1/embeddings",
                code="wrong_model_kind",
                param="model",
            )
        request_id = oai.new_id("chatcmpl" if chat else "cmpl")
        execute: dict[str, Any] = {"request_id": request_id, **body.sampling()}
        if isinstance(body, oai.ChatRequest):
            execute["messages"] = [message.model_dump(exclude_none=True) for message in body.messages]
            prompt_chars = sum(len(message.content or "") for message in body.messages)
        else:
            execute["prompt"] = body.text
            prompt_chars = len(body.text)
        ask = Ask(body.model, request.headers.get("x-rbee-hive"), key.name if key else None, prompt_chars)
        exchange = Exchange(request_id, body.model, ask.key)
        if body.stream:
            include_usage = bool(body.stream_options and body.stream_options.include_usage)
            fmt = wire.StreamFormat.OPENAI_CHAT if chat else wire.StreamFormat.OPENAI_COMPLETION
            execute.update(format=str(fmt), openai_model=body.model, include_usage=include_usage)
            encoder = oai.StreamEncoder(request_id, body.model, chat, include_usage)
            if not queen.admission.has_workers(body.model):
                return RelayResponse(cold_stream(ask, key, execute, exchange, encoder.error))
            ticket, first, chunks = await open_recorded(ask, key, execute, exchange)
            return RelayResponse(queen.relay(exchange, ticket, first, chunks, encoder.error))
        return await whole_answer(ask, key, execute, exchange, chat, body.model)

    async def cold_stream(
        ask: Ask, key: Key | None, execute: dict[str, Any], exchange: Exchange, on_error: Callable[[str, str], bytes]
    ) -> AsyncIterator[bytes]:
        """No worker of the model runs: answer at once, send SSE comments with the cold start's progress while
        the request waits for its worker, then relay as usual (a refusal becomes an error event)."""
        opening = asyncio.ensure_future(open_recorded(ask, key, execute, exchange))
        relaying = False
        try:
            await asyncio.wait({opening}, timeout=0.01)  # admission runs first, and starts the worker
            while not opening.done():
                start = queen.autoscale.starting.get(ask.model)
                if start is not None:
                    yield start.comment()
                await asyncio.wait({opening}, timeout=1.0)
            try:
                ticket, first, chunks = opening.result()
            except ClientError as refusal:
                yield on_error(str(refusal), refusal.code or "refused")
                return
            relaying = True
            async for chunk in queen.relay(exchange, ticket, first, chunks, on_error):
                yield chunk
        finally:
            if not opening.done():
                opening.cancel()
            elif not relaying and not opening.cancelled() and opening.exception() is None:
                ticket, _, chunks = opening.result()  # the client left between admission and the relay
                ticket.release()
                asyncio.get_running_loop().create_task(_close(chunks))

    async def open_recorded(
        ask: Ask, key: Key | None, execute: dict[str, Any], exchange: Exchange
    ) -> tuple[Ticket, bytes, AsyncIterator[bytes]]:
        """open_stream, with a refusal logged and counted like any finished request."""
        try:
            return await queen.open_stream(ask, key, execute, exchange)
        except ClientError as refusal:
            exchange.status, exchange.error = refusal.status, str(refusal)
            queen.record(exchange)
            raise

    async def whole_answer(
        ask: Ask, key: Key | None, execute: dict[str, Any], exchange: Exchange, chat: bool, model: str
    ) -> Response:
        execute["format"] = str(wire.StreamFormat.RBEE)
        ticket, first, chunks = await open_recorded(ask, key, execute, exchange)
        text, end = [], None
        try:
            buffer = first
            async for chunk in chunks:
                buffer += chunk
            for block in buffer.split(b"\n\n"):
                if block.startswith(b"data:"):
                    data = json.loads(block[5:])
                    if "token" in data:
                        text.append(data["token"])
                elif block.startswith(b"event: error"):
                    message = json.loads(block.split(b"data:", 1)[1])["error"]
                    exchange.status, exchange.error = 502, str(message)
                    raise ClientError(502, str(message), "api_error", "generation_failed")
            end = wire.parse_end(buffer)
        except UpstreamError as failure:
            exchange.status, exchange.error = 502, str(failure)
            raise ClientError(502, str(failure), "api_error", failure.code) from None
        finally:
            ticket.release()
            if end is not None:
                exchange.tokens = int(end.get("completion_tokens", 0))
            queen.record(exchange)
        if end is None:
            raise ClientError(502, "the worker ended the stream without finishing", "api_error", "worker_lost")
        usage = oai.usage(int(end["prompt_tokens"]), int(end["completion_tokens"]))
        finish = oai.openai_finish(str(end.get("finish_reason", "stop")))
        shape = oai.chat_response if chat else oai.completion_response
        return JSONResponse(shape(exchange.id, model, "".join(text), finish, usage))

    def model_kind(model: str) -> str | None:
        spec = queen.spec.model(model) if queen.spec else None
        return str(spec.kind) if spec else None

    async def embeddings(request: Request) -> Response:
        raw = await read_body(request)
        if not isinstance(raw, dict):
            raise ClientError(400, "the body must be a JSON object", code="invalid_json")
        try:
            body = oai.EmbeddingRequest.model_validate(raw)
        except pydantic.ValidationError as failure:
            raise validation_error(failure) from None
        key = queen.authorize(request, body.model)
        kind = model_kind(body.model)
        if kind is None:
            raise ClientError(404, f"the model {body.model} does not exist", code="model_not_found", param="model")
        if kind != "embedding":
            raise ClientError(
                400,
                f"the model {body.model} is a text model; /v1/embeddings needs an embedding model",
                code="wrong_model_kind",
                param="model",
            )
        exchange = Exchange(oai.new_id("emb"), body.model, key.name if key else None)
        ask = Ask(body.model, request.headers.get("x-rbee-hive"), exchange.key, sum(map(len, body.texts)))
        try:
            answer = await queen.embed(ask, key, body.texts, exchange)
        except ClientError as refusal:
            exchange.status, exchange.error = refusal.status, str(refusal)
            raise
        finally:
            queen.record(exchange)
        exchange.tokens = 0
        return JSONResponse(
            oai.embedding_response(body.model, answer["embeddings"], int(answer["prompt_tokens"]), body.encoding_format)
        )

    async def chat_completions(request: Request) -> Response:
        return await openai_endpoint(request, chat=True)

    async def completions(request: Request) -> Response:
        return await openai_endpoint(request, chat=False)

    async def create_task(request: Request) -> Response:
        raw = await read_body(request)
        if not isinstance(raw, dict) or not isinstance(raw.get("model"), str):
            raise ClientError(400, "the body must be a JSON object with a 'model'", param="model")
        model = raw.pop("model")
        hive = raw.pop("hive", None)
        key = queen.authorize(request, model)
        task_id = oai.new_id("task")
        try:
            execute = wire.ExecuteRequest.model_validate({**raw, "request_id": task_id})
        except pydantic.ValidationError as failure:
            raise validation_error(failure) from None
        if not queen.registry.knows(model):
            raise ClientError(404, f"the model {model} does not exist", code="model_not_found", param="model")
        task = Task(task_id, model)
        queen.tasks[task_id] = task
        while len(queen.tasks) > MAX_TASKS:
            oldest = next(iter(queen.tasks))
            if not queen.tasks[oldest].finished:
                break
            del queen.tasks[oldest]
        prompt_chars = len(execute.prompt or "") + sum(len(m.content or "") for m in execute.messages or ())
        ask = Ask(model, hive if isinstance(hive, str) else None, key.name if key else None, prompt_chars)
        body = execute.model_dump(mode="json") | {"format": str(wire.StreamFormat.RBEE)}
        task.runner = asyncio.get_running_loop().create_task(_run_task(queen, task, ask, key, body))
        return JSONResponse({"task_id": task_id, "events": f"/v2/tasks/{task_id}/events"}, 201)

    async def task_events(request: Request) -> Response:
        task = queen.tasks.get(request.path_params["id"])
        if task is None:
            raise ClientError(404, "no such task", code="not_found")
        queen.authorize(request, task.model)

        async def replay() -> AsyncIterator[bytes]:
            sent = 0
            while True:
                waiter = task.changed
                while sent < len(task.chunks):
                    yield task.chunks[sent]
                    sent += 1
                if task.finished:
                    return
                await waiter.wait()

        return StreamingResponse(replay(), media_type="text/event-stream", headers=SSE_HEADERS)

    async def cancel_task(request: Request) -> Response:
        task = queen.tasks.get(request.path_params["id"])
        if task is None:
            raise ClientError(404, "no such task", code="not_found")
        queen.authorize(request, task.model)
        if task.runner is not None and not task.finished:
            task.runner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task.runner
        return JSONResponse({"task_id": task.id, "finished": True})

    async def metrics(request: Request) -> Response:
        return Response(queen.metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    async def openapi(request: Request) -> Response:
        return JSONResponse(docs.openapi())

    async def put_spec(request: Request) -> Response:
        raw = await read_body(request)
        try:
            spec = HiveFile.model_validate(raw.get("spec") if isinstance(raw, dict) else None)
        except pydantic.ValidationError as failure:
            return JSONResponse(
                wire.error_body(f"not a valid hive.yaml: {failure.errors()[0]['msg']}", "invalid_spec"), 400
            )
        source = str(raw.get("source", ""))
        policy = raw.get("policy_source")
        try:
            generation, changed = queen.set_spec(spec, source, policy if isinstance(policy, str) else None)
        except PolicyError as error:
            return JSONResponse(wire.error_body(str(error), "invalid_policy"), 400)
        await queen.refresh()
        return JSONResponse({"generation": generation, "changed": changed})

    async def status(request: Request) -> Response:
        observed = queen.registry.observed
        return JSONResponse(
            {
                "generation": queen.generation,
                "observed_at": queen.registry.observed_at,
                "hives": observed.model_dump(mode="json")["hives"] if observed else [],
                "routes": [
                    {
                        "worker": r.worker_id,
                        "hive": r.hive,
                        "model": r.model,
                        "url": r.url,
                        "in_flight": r.in_flight,
                        "slots": r.slots,
                    }
                    for r in queen.registry.routes.values()
                ],
                "queues": {model: queen.admission.queue_depth(model) for model in queen.admission.lanes},
                "conditions": [condition.to_json() for condition in queen.reconciler.conditions.values()],
                "heartbeats": queen.heartbeats.ages(time.monotonic()),
                "reconcile": {
                    "interval": queen.reconciler.interval,
                    "suspended": queen.reconciler.suspended,
                    "passes": queen.reconciler.passes,
                    "last": queen.reconciler.last.to_json() if queen.reconciler.last else None,
                },
            }
        )

    async def explain(request: Request) -> Response:
        model = request.query_params.get("model", "")
        ask = Ask(model, request.query_params.get("hive"), None, int(request.query_params.get("prompt_chars", 0)))
        candidates, pick, reason = queen.admission.explain(ask)
        return JSONResponse(
            {
                "model": model,
                "policy": queen.admission.policy.kind,
                "candidates": candidates,
                "pick": pick,
                "reason": reason,
            }
        )

    async def events(request: Request) -> Response:
        """The event log: the last `limit` events as JSON, or with `follow=1` an SSE stream that goes on with
        each new event (`after=ID` resumes after an event already seen)."""
        try:
            limit = max(1, min(int(request.query_params.get("limit", 100)), 10_000))
            after = int(request.query_params["after"]) if "after" in request.query_params else None
        except ValueError:
            return JSONResponse(wire.error_body("limit and after must be integers", "invalid_query"), 400)
        if request.query_params.get("follow") not in ("1", "true"):
            return JSONResponse({"events": queen.store.events(limit, after)})

        async def follow() -> AsyncIterator[bytes]:
            backlog = queen.store.events(limit, after)
            last = backlog[-1]["id"] if backlog else (after if after is not None else _last_event_id(queen))
            for item in backlog:
                yield _event_sse(item)
            while True:
                waiter = queen.event_added
                fresh = queen.store.events(1000, last)
                for item in fresh:
                    yield _event_sse(item)
                    last = item["id"]
                if not fresh:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(waiter.wait(), 15.0)
                    if not waiter.is_set():
                        yield b": keep-alive\n\n"

        return StreamingResponse(follow(), media_type="text/event-stream", headers=SSE_HEADERS)

    async def reconcile(request: Request) -> Response:
        """Suspend or resume the reconcile loop: `{"suspended": true|false}`."""
        raw = await read_body(request)
        if not isinstance(raw, dict) or not isinstance(raw.get("suspended"), bool):
            return JSONResponse(wire.error_body('send {"suspended": true} or {"suspended": false}', "invalid"), 400)
        if raw["suspended"] != queen.reconciler.suspended:
            queen.reconciler.suspended = raw["suspended"]
            queen.event("reconcile", "fleet", "suspended" if raw["suspended"] else "resumed")
            if not raw["suspended"]:
                queen.reconciler.request()
        return JSONResponse({"suspended": queen.reconciler.suspended})

    async def heartbeat(request: Request) -> Response:
        try:
            state = HiveState.model_validate_json(await request.body())
        except pydantic.ValidationError:
            return JSONResponse(wire.error_body("the body must be a hive state", "invalid_state"), 400)
        try:
            queen.heartbeat(state)
        except KeyError:
            return JSONResponse(wire.error_body(f"hive {state.name} is not in the applied spec", "unknown_hive"), 404)
        return JSONResponse({"ok": True})

    async def shutdown(request: Request) -> Response:
        if queen.server is not None:
            queen.server.should_exit = True
        return JSONResponse({"state": "stopping"}, 202)

    return RawSend(
        Starlette(
            routes=[
                routing.Route("/health", health),
                routing.Route("/metrics", metrics),
                routing.Route("/openapi.json", openapi),
                routing.Route("/v1/models", client(list_models)),
                routing.Route("/v1/chat/completions", client(chat_completions), methods=["POST"]),
                routing.Route("/v1/completions", client(completions), methods=["POST"]),
                routing.Route("/v1/embeddings", client(embeddings), methods=["POST"]),
                routing.Route("/v2/tasks", client(create_task), methods=["POST"]),
                routing.Route("/v2/tasks/{id}/events", client(task_events)),
                routing.Route("/v2/tasks/{id}", client(cancel_task), methods=["DELETE"]),
                routing.Route("/v2/spec", operator(client(put_spec)), methods=["PUT"]),
                routing.Route("/v2/status", operator(status)),
                routing.Route("/v2/route", operator(explain)),
                routing.Route("/v2/events", operator(events)),
                routing.Route("/v2/heartbeat", operator(heartbeat), methods=["POST"]),
                routing.Route("/v2/reconcile", operator(client(reconcile)), methods=["PUT"]),
                routing.Route("/v2/admin/shutdown", operator(shutdown), methods=["POST"]),
            ]
        )
    )


async def _run_task(queen: Queen, task: Task, ask: Ask, key: Key | None, body: dict[str, Any]) -> None:
    exchange = Exchange(task.id, task.model, ask.key)
    opening = asyncio.ensure_future(queen.open_stream(ask, key, body, exchange))
    try:
        while not opening.done():  # a cold start: the task's events carry its progress meanwhile
            await asyncio.wait({opening}, timeout=1.0)
            start = queen.autoscale.starting.get(ask.model)
            if start is not None and not opening.done():
                task.add(start.comment())
        ticket, first, chunks = opening.result()
    except asyncio.CancelledError:
        opening.cancel()
        raise
    except ClientError as refusal:
        exchange.status, exchange.error = refusal.status, str(refusal)
        queen.record(exchange)
        task.add(wire.error_event(str(refusal), refusal.code or "refused"), final=True)
        return
    try:
        async for chunk in queen.relay(exchange, ticket, first, chunks, wire.error_event):
            task.add(chunk)
    except asyncio.CancelledError:
        task.add(wire.done_event(0, 0, wire.FinishReason.CANCELLED), final=True)
        raise
    task.add(b"", final=True)


def serve(state_dir: Path, listen: str, token: str | None, poll_interval: float = 1.0) -> None:
    state_dir.mkdir(parents=True, exist_ok=True)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    logging.getLogger("apscheduler").setLevel(logging.WARNING)
    host, _, port = listen.rpartition(":")

    async def main() -> None:
        queen = Queen(state_dir, token, poll_interval, listen=listen)
        server = uvicorn.Server(
            uvicorn.Config(
                create_app(queen),
                host=host.strip("[]"),
                port=int(port),
                log_level="warning",
                access_log=False,
                lifespan="off",
                timeout_graceful_shutdown=3,
            )
        )
        queen.server = server
        poller = asyncio.create_task(queen.poll())
        queen.reconciler.start(queen.spec.queen.reconcile_interval if queen.spec else 30.0)
        serving = asyncio.create_task(server.serve())
        while not server.started and not serving.done():
            await asyncio.sleep(0.01)
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, lambda: setattr(server, "should_exit", True))
        log.info("queen listening on %s (pid %d)", listen, os.getpid())
        await serving
        poller.cancel()
        await queen.reconciler.stop()
        await queen.autoscale.close()
        await queen.upstream.close()
        if queen.observer is not None:
            await queen.observer.close()
        queen.store.close()

    aio.run(main())
