"""The queen daemon: `rbee queen serve`.

Clients: GET /v1/models, POST /v1/chat/completions, POST /v1/completions (OpenAI-compatible), and rbee's task
API POST /v2/tasks, GET /v2/tasks/{id}/events, DELETE /v2/tasks/{id}. Operators (cluster token): PUT /v2/spec,
GET /v2/status, GET /v2/events, POST /v2/admin/shutdown. GET /health is open.
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
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pydantic
import uvicorn
from starlette import routing
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from rbee import __version__
from rbee.api import wire
from rbee.observe import hives as observe_hives
from rbee.queen import openai_api as oai
from rbee.queen.registry import NoWorker, Registry
from rbee.queen.relay import Event, Upstream, UpstreamError
from rbee.queen.store import Store
from rbee.spec.schema import HiveFile

log = logging.getLogger("rbee.queen")
Handler = Callable[[Request], Awaitable[Response]]
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
QUEUE_WAIT = 30.0
MAX_TASKS = 1000


@dataclass
class Task:
    id: str
    model: str
    events: list[bytes] = field(default_factory=list)
    finished: bool = False
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    runner: asyncio.Task[None] | None = None

    def add(self, event: bytes, final: bool = False) -> None:
        self.events.append(event)
        self.finished = self.finished or final
        self.changed.set()
        self.changed = asyncio.Event()


class Queen:
    def __init__(
        self, state_dir: Path, token: str | None, poll_interval: float = 1.0, queue_wait: float = QUEUE_WAIT
    ) -> None:
        self.queue_wait = queue_wait
        self.store = Store(state_dir / "queen.db")
        self.token = token
        self.poll_interval = poll_interval
        self.registry = Registry()
        self.upstream = Upstream(token)
        self.tasks: dict[str, Task] = {}
        self.api_keys: dict[str, tuple[str, ...] | None] = {}
        self.server: uvicorn.Server | None = None
        self.refreshed = asyncio.Event()
        current = self.store.current_spec()
        self.generation: int = current[0] if current else 0
        self.spec: HiveFile | None = current[1] if current else None
        if self.spec is not None:
            self.registry.spec = self.spec
            self.registry.restore(self.store.workers())
            self._load_keys(self.spec)

    def _load_keys(self, spec: HiveFile) -> None:
        keys: dict[str, tuple[str, ...] | None] = {}
        for ref in spec.queen.api_keys:
            value = os.environ.get(ref.env)
            if value:
                keys[value] = ref.models
            else:
                log.warning("API key variable %s is not set in the queen's environment; that key is refused", ref.env)
        self.api_keys = keys

    def set_spec(self, spec: HiveFile, source: str) -> tuple[int, bool]:
        generation, changed = self.store.apply_spec(spec, source)
        self.generation, self.spec = generation, spec
        self.registry.spec = spec
        self._load_keys(spec)
        return generation, changed

    async def refresh(self) -> None:
        spec = self.spec
        if spec is None:
            return
        observed = await observe_hives.observe_async(spec, timeout=2.0, token=self.token)
        for hive in observed.hives:
            if hive.state is not None:
                self.store.saw_hive(hive.name)
        before = self.registry.snapshot()
        self.registry.update(spec, observed)
        after = self.registry.snapshot()
        if after != before:
            self.store.replace_workers(after)
            self.store.log("registry", "workers", f"{len(after)} workers routable")
        self.refreshed.set()

    async def poll(self) -> None:
        while True:
            try:
                await self.refresh()
            except Exception:
                log.exception("refreshing the registry failed")
            await asyncio.sleep(self.poll_interval)

    async def run(self, model: str, body: dict[str, Any]) -> AsyncIterator[Event]:
        """Route one request to a free worker and relay its events; errors become an error event.

        A worker that refuses before its first event (busy: the registry's view was a moment old) is not an
        error; the request goes back to waiting for a free worker until its deadline.
        """
        deadline = time.monotonic() + self.queue_wait
        while True:
            try:
                route = await self.registry.acquire(model, max(0.0, deadline - time.monotonic()))
            except NoWorker as refusal:
                yield Event("error", {"error": str(refusal), "code": "no_worker", "retry_after": refusal.retry_after})
                return
            started = False
            try:
                async for event in self.upstream.execute(route.url, body):
                    started = True
                    yield event
                return
            except UpstreamError as failure:
                if failure.code == "worker_refused" and not started and time.monotonic() < deadline:
                    await asyncio.sleep(0.02)
                    continue
                if failure.code == "worker_lost":
                    self.registry.forget(route)
                yield Event(
                    "error",
                    {"error": f"worker {route.worker_id} on hive {route.hive}: {failure}", "code": failure.code},
                )
                return
            finally:
                await self.registry.release(route)

    def client_allowed(self, request: Request, model: str | None) -> JSONResponse | None:
        if not self.api_keys and not (self.spec and self.spec.queen.api_keys):
            return None
        given = request.headers.get("authorization", "").removeprefix("Bearer ").strip()
        for key, models in self.api_keys.items():
            if hmac.compare_digest(given.encode(), key.encode()):
                if model is not None and models is not None and model not in models:
                    return JSONResponse(
                        oai.error(f"this API key may not use model {model}", "permission_error", "model_not_allowed"),
                        403,
                    )
                return None
        return JSONResponse(
            oai.error(
                "a valid API key is required: send Authorization: Bearer <key>",
                "authentication_error",
                "invalid_api_key",
            ),
            401,
        )


def create_app(queen: Queen) -> Starlette:
    def operator(handler: Handler) -> Handler:
        async def check(request: Request) -> Response:
            if queen.token is not None:
                given = request.headers.get("authorization", "")
                if not hmac.compare_digest(given.encode(), f"Bearer {queen.token}".encode()):
                    return JSONResponse(wire.error_body("missing or wrong cluster token", "unauthorized"), 401)
            return await handler(request)

        return check

    async def read_json(request: Request) -> Any:
        try:
            return json.loads(await request.body())
        except ValueError:
            return None

    async def health(request: Request) -> Response:
        return JSONResponse({"status": "ok", "version": __version__, "generation": queen.generation})

    async def list_models(request: Request) -> Response:
        refused = queen.client_allowed(request, None)
        if refused:
            return refused
        data = [{"id": name, "object": "model", "created": 0, "owned_by": "rbee"} for name in queen.registry.models()]
        return JSONResponse({"object": "list", "data": data})

    async def openai_endpoint(request: Request, chat: bool) -> Response:
        raw = await read_json(request)
        if not isinstance(raw, dict):
            return JSONResponse(oai.error("the body must be a JSON object"), 400)
        try:
            body: oai.ChatRequest | oai.CompletionRequest = (
                oai.ChatRequest.model_validate(raw) if chat else oai.CompletionRequest.model_validate(raw)
            )
        except pydantic.ValidationError as failure:
            item = failure.errors()[0]
            param = ".".join(str(part) for part in item["loc"])
            return JSONResponse(oai.error(f"{param}: {item['msg']}", param=param), 400)
        refused = queen.client_allowed(request, body.model)
        if refused:
            return refused
        if not queen.registry.knows(body.model):
            return JSONResponse(
                oai.error(f"the model {body.model} does not exist", code="model_not_found", param="model"), 404
            )
        request_id = oai.new_id("chatcmpl" if chat else "cmpl")
        execute: dict[str, Any] = {"request_id": request_id, **body.sampling()}
        if isinstance(body, oai.ChatRequest):
            execute["messages"] = [message.model_dump(exclude_none=True) for message in body.messages]
        else:
            execute["prompt"] = body.text
        events = queen.run(body.model, execute)
        if body.stream:
            first = await anext(events)
            if first.kind == "error":
                return _error_response(first)
            include_usage = bool(body.stream_options and body.stream_options.include_usage)
            stream = _openai_stream(first, events, request_id, body.model, chat, include_usage)
            return StreamingResponse(stream, media_type="text/event-stream", headers=SSE_HEADERS)
        text, done = [], None
        async for event in events:
            if event.kind == "error":
                return _error_response(event)
            if event.kind == "token":
                text.append(event.data["token"])
            else:
                done = event.data
        assert done is not None
        usage = oai.usage(done.get("prompt_tokens", 0), done.get("total_tokens", 0))
        finish = oai.openai_finish(done.get("finish_reason", "stop"))
        shape = oai.chat_response if chat else oai.completion_response
        return JSONResponse(shape(request_id, body.model, "".join(text), finish, usage))

    async def chat_completions(request: Request) -> Response:
        return await openai_endpoint(request, chat=True)

    async def completions(request: Request) -> Response:
        return await openai_endpoint(request, chat=False)

    async def create_task(request: Request) -> Response:
        raw = await read_json(request)
        if not isinstance(raw, dict) or not isinstance(raw.get("model"), str):
            return JSONResponse(
                wire.error_body("the body must be a JSON object with a 'model'", "invalid_request"), 400
            )
        model = raw.pop("model")
        refused = queen.client_allowed(request, model)
        if refused:
            return refused
        task_id = oai.new_id("task")
        try:
            execute = wire.ExecuteRequest.model_validate({**raw, "request_id": task_id})
        except pydantic.ValidationError as failure:
            item = failure.errors()[0]
            where = ".".join(str(part) for part in item["loc"])
            message = str(item["msg"]).removeprefix("Value error, ")
            return JSONResponse(wire.error_body(f"{where + ': ' if where else ''}{message}", "invalid_request"), 400)
        if not queen.registry.knows(model):
            return JSONResponse(wire.error_body(f"the model {model} does not exist", "model_not_found"), 404)
        task = Task(task_id, model)
        queen.tasks[task_id] = task
        while len(queen.tasks) > MAX_TASKS:
            oldest = next(iter(queen.tasks))
            if not queen.tasks[oldest].finished:
                break
            del queen.tasks[oldest]
        task.runner = asyncio.get_running_loop().create_task(_run_task(queen, task, execute.model_dump()))
        return JSONResponse({"task_id": task_id, "events": f"/v2/tasks/{task_id}/events"}, 201)

    async def task_events(request: Request) -> Response:
        task = queen.tasks.get(request.path_params["id"])
        if task is None:
            return JSONResponse(wire.error_body("no such task", "not_found"), 404)
        refused = queen.client_allowed(request, task.model)
        if refused:
            return refused

        async def replay() -> AsyncIterator[bytes]:
            sent = 0
            while True:
                waiter = task.changed
                while sent < len(task.events):
                    yield task.events[sent]
                    sent += 1
                if task.finished:
                    return
                await waiter.wait()

        return StreamingResponse(replay(), media_type="text/event-stream", headers=SSE_HEADERS)

    async def cancel_task(request: Request) -> Response:
        task = queen.tasks.get(request.path_params["id"])
        if task is None:
            return JSONResponse(wire.error_body("no such task", "not_found"), 404)
        refused = queen.client_allowed(request, task.model)
        if refused:
            return refused
        if task.runner is not None and not task.finished:
            task.runner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task.runner
        return JSONResponse({"task_id": task.id, "finished": True})

    async def put_spec(request: Request) -> Response:
        raw = await read_json(request)
        try:
            spec = HiveFile.model_validate(raw.get("spec") if isinstance(raw, dict) else None)
        except pydantic.ValidationError as failure:
            return JSONResponse(
                wire.error_body(f"not a valid hive.yaml: {failure.errors()[0]['msg']}", "invalid_spec"), 400
            )
        source = str(raw.get("source", "")) if isinstance(raw, dict) else ""
        generation, changed = queen.set_spec(spec, source)
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
                    {"worker": r.worker_id, "hive": r.hive, "model": r.model, "url": r.url, "in_flight": r.in_flight}
                    for r in queen.registry.routes.values()
                ],
            }
        )

    async def events(request: Request) -> Response:
        return JSONResponse({"events": queen.store.events()})

    async def shutdown(request: Request) -> Response:
        if queen.server is not None:
            queen.server.should_exit = True
        return JSONResponse({"state": "stopping"}, 202)

    return Starlette(
        routes=[
            routing.Route("/health", health),
            routing.Route("/v1/models", list_models),
            routing.Route("/v1/chat/completions", chat_completions, methods=["POST"]),
            routing.Route("/v1/completions", completions, methods=["POST"]),
            routing.Route("/v2/tasks", create_task, methods=["POST"]),
            routing.Route("/v2/tasks/{id}/events", task_events),
            routing.Route("/v2/tasks/{id}", cancel_task, methods=["DELETE"]),
            routing.Route("/v2/spec", operator(put_spec), methods=["PUT"]),
            routing.Route("/v2/status", operator(status)),
            routing.Route("/v2/events", operator(events)),
            routing.Route("/v2/admin/shutdown", operator(shutdown), methods=["POST"]),
        ]
    )


def _error_response(event: Event) -> JSONResponse:
    code = str(event.data.get("code", "worker_error"))
    status = 503 if code in ("no_worker", "worker_refused") else 502
    headers = {"Retry-After": str(event.data["retry_after"])} if event.data.get("retry_after") else None
    kind = "service_unavailable" if status == 503 else "api_error"
    return JSONResponse(oai.error(str(event.data.get("error")), kind, code), status, headers=headers)


async def _openai_stream(
    first: Event, events: AsyncIterator[Event], request_id: str, model: str, chat: bool, include_usage: bool
) -> AsyncIterator[bytes]:
    created = int(time.time())

    def frame(payload: dict[str, Any]) -> bytes:
        return b"data: " + json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode() + b"\n\n"

    if chat:
        yield frame(oai.chat_chunk(request_id, model, created, {"role": "assistant", "content": ""}, None))

    async def all_events() -> AsyncIterator[Event]:
        yield first
        async for event in events:
            yield event

    async for event in all_events():
        if event.kind == "token":
            token = event.data["token"]
            yield frame(
                oai.chat_chunk(request_id, model, created, {"content": token}, None)
                if chat
                else oai.completion_chunk(request_id, model, created, token, None)
            )
        elif event.kind == "done":
            finish = oai.openai_finish(event.data.get("finish_reason", "stop"))
            yield frame(
                oai.chat_chunk(request_id, model, created, {}, finish)
                if chat
                else oai.completion_chunk(request_id, model, created, "", finish)
            )
            if include_usage:
                usage = oai.usage(event.data.get("prompt_tokens", 0), event.data.get("total_tokens", 0))
                yield frame(
                    oai.chat_chunk(request_id, model, created, {}, None, usage)
                    if chat
                    else oai.completion_chunk(request_id, model, created, "", None, usage)
                )
            yield b"data: [DONE]\n\n"
            return
        else:
            yield frame(oai.error(str(event.data.get("error")), "api_error", str(event.data.get("code"))))
            return


async def _run_task(queen: Queen, task: Task, execute: dict[str, Any]) -> None:
    try:
        async for event in queen.run(task.model, execute):
            if event.kind == "token":
                task.add(wire.token_event(event.data["token"], event.data["index"]))
            elif event.kind == "done":
                task.add(wire.sse(event.data), final=True)
                return
            else:
                task.add(wire.sse(event.data, event="error"), final=True)
                return
    except asyncio.CancelledError:
        task.add(wire.done_event(0, 0, wire.FinishReason.CANCELLED), final=True)
        raise


def serve(state_dir: Path, listen: str, token: str | None, poll_interval: float = 1.0) -> None:
    state_dir.mkdir(parents=True, exist_ok=True)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s queen %(levelname)s %(message)s")
    host, _, port = listen.rpartition(":")

    async def main() -> None:
        queen = Queen(state_dir, token, poll_interval)
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
        serving = asyncio.create_task(server.serve())
        while not server.started and not serving.done():
            await asyncio.sleep(0.01)
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, lambda: setattr(server, "should_exit", True))
        log.info("queen listening on %s (pid %d)", listen, os.getpid())
        await serving
        poller.cancel()
        await queen.upstream.close()
        queen.store.close()

    asyncio.run(main())
