"""The worker daemon: `rbee worker serve`. One model replica in one process, one request at a time.

States: loading -> idle <-> busy -> stopping. It tells its hive when it is ready (or why it failed), and it
exits when its hive dies (parent-death signal, and a watchdog on the parent pid where that is unavailable).
"""

from __future__ import annotations

import asyncio
import base64
import collections
import concurrent.futures
import contextlib
import ctypes
import hmac
import json
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import httpx
import pydantic
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from rbee import aio
from rbee.api import openai, wire
from rbee.api.state import WorkerState
from rbee.worker import backends

log = logging.getLogger("rbee.worker")
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


@dataclass
class WorkerOptions:
    worker_id: str
    model: str
    model_path: str
    backend: str
    device: str
    host: str
    port: int
    hive_url: str | None
    token: str | None
    parent_pid: int | None = None
    threads: int | None = None


@dataclass
class Runtime:
    options: WorkerOptions
    engine: backends.Backend | backends.Embedder
    state: WorkerState = WorkerState.LOADING
    progress: float = 0.0
    error: str | None = None
    request_id: str | None = None
    cancel: threading.Event = field(default_factory=threading.Event)
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    loop: asyncio.AbstractEventLoop | None = None
    server: uvicorn.Server | None = None
    streaming: bool = False
    claimed: float = 0.0

    def set_state(self, state: WorkerState) -> None:
        self.state = state
        self.notify()

    def notify(self) -> None:
        if self.loop is not None:
            self.loop.call_soon_threadsafe(self._wake)

    def _wake(self) -> None:
        self.changed.set()
        self.changed = asyncio.Event()


def create_app(runtime: Runtime) -> Starlette:
    token = runtime.options.token

    def guarded(handler: Callable[[Request], Awaitable[Response]]) -> Callable[[Request], Awaitable[Response]]:
        async def check(request: Request) -> Response:
            if token is not None:
                given = request.headers.get("authorization", "")
                if not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
                    return JSONResponse(wire.error_body("missing or wrong cluster token", "unauthorized"), 401)
            return await handler(request)

        return check

    async def health(request: Request) -> Response:
        return JSONResponse({"status": "ok", "state": str(runtime.state), "id": runtime.options.worker_id})

    async def ready(request: Request) -> Response:
        is_ready = runtime.state in (WorkerState.IDLE, WorkerState.BUSY)
        body = {"ready": is_ready, "state": str(runtime.state), "error": runtime.error}
        return JSONResponse(body, 200 if is_ready else 503)

    async def loading_progress(request: Request) -> Response:
        async def events() -> AsyncIterator[bytes]:
            while True:
                waiter = runtime.changed
                yield wire.sse({"progress": runtime.progress, "state": str(runtime.state), "error": runtime.error})
                if runtime.state is not WorkerState.LOADING:
                    return
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(waiter.wait(), 1.0)

        return StreamingResponse(events(), media_type="text/event-stream", headers=SSE_HEADERS)

    async def execute(request: Request) -> Response:
        engine = runtime.engine
        if isinstance(engine, backends.Embedder):
            return await embed(request, engine)
        try:
            body = wire.ExecuteRequest.model_validate_json(await request.body())
        except pydantic.ValidationError as error:
            return JSONResponse(wire.error_body(_first_error(error), "invalid_request"), 400)
        if runtime.state is WorkerState.LOADING:
            return JSONResponse(wire.error_body("the model is still loading", "loading"), 503)
        if runtime.state is not WorkerState.IDLE:
            return JSONResponse(wire.error_body(f"the worker is {runtime.state}", str(runtime.state)), 503)
        if body.messages is not None:
            prompt, template_stops = engine.render_chat(body.messages)
            options = body.model_copy(update={"stop": (*body.stop, *template_stops)})
        else:
            prompt, options = body.prompt or "", body
        encoder = _encoder(body, runtime.options.model)
        runtime.request_id = body.request_id
        runtime.cancel = threading.Event()
        runtime.claimed = time.monotonic()
        runtime.set_state(WorkerState.BUSY)
        return StreamingResponse(
            _stream(runtime, engine, prompt, options, encoder), media_type="text/event-stream", headers=SSE_HEADERS
        )

    async def embed(request: Request, engine: backends.Embedder) -> Response:
        try:
            body = wire.EmbedRequest.model_validate_json(await request.body())
        except pydantic.ValidationError as error:
            return JSONResponse(wire.error_body(_first_error(error), "invalid_request"), 400)
        if runtime.state is not WorkerState.IDLE:
            return JSONResponse(wire.error_body(f"the worker is {runtime.state}", str(runtime.state)), 503)
        runtime.request_id = body.request_id
        runtime.claimed = time.monotonic()
        runtime.streaming = True
        runtime.set_state(WorkerState.BUSY)
        try:
            loop = asyncio.get_running_loop()
            vectors, tokens = await loop.run_in_executor(_GENERATE, engine.embed, body.input)
        except Exception as error:
            log.exception("embedding failed")
            return JSONResponse(wire.error_body(f"embedding failed: {error}", "generation_failed"), 500)
        finally:
            _release(runtime)
        if body.encoding == "base64":
            encoded = [base64.b64encode(row.astype("<f4").tobytes()).decode() for row in vectors]
            return JSONResponse({"embeddings": encoded, "prompt_tokens": tokens})
        return JSONResponse({"embeddings": vectors.tolist(), "prompt_tokens": tokens})

    async def cancel(request: Request) -> Response:
        try:
            wanted = json.loads(await request.body() or b"{}").get("request_id")
        except (ValueError, AttributeError):
            return JSONResponse(wire.error_body("the body must be JSON", "invalid_request"), 400)
        hit = runtime.state is WorkerState.BUSY and wanted in (None, runtime.request_id)
        if hit:
            runtime.cancel.set()
        return JSONResponse({"cancelled": hit, "request_id": runtime.request_id})

    async def shutdown(request: Request) -> Response:
        runtime.set_state(WorkerState.STOPPING)
        runtime.cancel.set()
        if runtime.server is not None:
            runtime.server.should_exit = True
        return JSONResponse({"state": "stopping"}, 202)

    return Starlette(
        routes=[
            Route("/health", health),
            Route("/v1/ready", guarded(ready)),
            Route("/v1/loading/progress", guarded(loading_progress)),
            Route("/v1/execute", guarded(execute), methods=["POST"]),
            Route("/v1/cancel", guarded(cancel), methods=["POST"]),
            Route("/v1/admin/shutdown", guarded(shutdown), methods=["POST"]),
        ]
    )


class Encoder(Protocol):
    def start(self) -> bytes: ...

    def token(self, text: str) -> bytes: ...

    def finish(self, reason: str, prompt_tokens: int, completion_tokens: int) -> bytes: ...

    def error(self, message: str, code: str) -> bytes: ...


class RbeeEncoder:
    def __init__(self) -> None:
        self.index = 0

    def start(self) -> bytes:
        return b""

    def token(self, text: str) -> bytes:
        self.index += 1
        return wire.token_event(text, self.index - 1)

    def finish(self, reason: str, prompt_tokens: int, completion_tokens: int) -> bytes:
        return wire.done_event(completion_tokens, prompt_tokens, wire.FinishReason(reason))

    def error(self, message: str, code: str) -> bytes:
        return wire.error_event(message, code)


def _encoder(body: wire.ExecuteRequest, model: str) -> Encoder:
    if body.format is wire.StreamFormat.RBEE:
        return RbeeEncoder()
    chat = body.format is wire.StreamFormat.OPENAI_CHAT
    return openai.StreamEncoder(body.request_id, body.openai_model or model, chat, body.include_usage)


STREAM_PACE = 0.005
"""While tokens come faster than this (seconds), the worker writes them in batches at this pace: at most 200
writes a second per stream, which no reader can tell from one write per token."""


class _Mailbox:
    """From the generation thread to the event loop. Items queue without a lock (deque appends are atomic).

    Each cross-thread wake-up costs a syscall and a hand-off of the GIL, which a fast engine (under a millisecond
    a token) pays as a third of its speed, and every wake-up of the loop takes a core from an engine that uses
    them all. So the producer wakes the loop only when the loop is asleep. While tokens come faster than `pace`,
    the loop, after taking a batch, looks again `pace` seconds later and takes everything that came meanwhile;
    once they come slower, it sleeps until the next one (one wake-up a token, no timer). The first batch is
    paced; the end of the generation always wakes the loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop, pace: float) -> None:
        self.loop = loop
        self.pace = pace
        self.items: collections.deque[tuple[str, Any]] = collections.deque()
        self.ready = asyncio.Event()
        self.asleep = True
        self.hurried = True
        self.last: float | None = None

    def put(self, item: tuple[str, Any], *, final: bool = False) -> None:
        self.items.append(item)
        if self.asleep or final:
            self.asleep = False
            self.loop.call_soon_threadsafe(self.ready.set)

    async def take(self) -> list[tuple[str, Any]]:
        if self.hurried and self.last is not None:
            pause = self.last + self.pace - self.loop.time()
            if pause > 0:
                timer = self.loop.call_later(pause, self.ready.set)
                try:
                    await self.ready.wait()
                finally:
                    timer.cancel()
        slept = False
        while not self.items:
            self.ready.clear()
            self.asleep = True
            if self.items:  # a put that came before `asleep` was set did not wake us
                break
            slept = True
            await self.ready.wait()
        self.ready.clear()
        now = self.loop.time()
        self.hurried = self.last is None or not slept or now - self.last < self.pace
        self.asleep = not self.hurried
        self.last = now
        taken = []
        while self.items:
            taken.append(self.items.popleft())
        return taken


_GENERATE = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="generate")
"""One long-lived generation thread: engines keep per-thread state (torch's intra-op pool took ~30 ms to set
up in each new thread), and the engine serves one request at a time anyway."""


async def _stream(
    runtime: Runtime, engine: backends.Backend, prompt: str, options: wire.SamplingOptions, encoder: Encoder
) -> AsyncIterator[bytes]:
    """Run the generation in a thread and relay its pieces; a client that goes away cancels it."""
    mailbox = _Mailbox(asyncio.get_running_loop(), STREAM_PACE)
    result = backends.Generation()
    cancel = runtime.cancel

    def produce() -> None:
        try:
            for piece in engine.generate(prompt, options, cancel, result):
                mailbox.put(("piece", piece))
            mailbox.put(("done", None), final=True)
        except backends.BackendError as error:
            mailbox.put(("error", str(error)), final=True)
        except Exception as error:  # an engine crash must still end the stream with an error event
            log.exception("generation failed")
            mailbox.put(("error", f"generation failed: {error}"), final=True)

    runtime.streaming = True
    job = _GENERATE.submit(produce)
    try:
        opening = encoder.start()  # sent with the first token, so a client's first bytes hold text
        while True:
            items = await mailbox.take()
            # Pieces that arrived while the last write went out leave in one write, as separate events.
            events = [encoder.token(value) for kind, value in items if kind == "piece"]
            if events:
                yield opening + b"".join(events)
                opening = b""
            kind, value = items[-1]
            if kind == "piece":
                continue
            # The engine is done: become idle before the last event, so whoever reads it may send the next
            # request at once.
            await asyncio.wrap_future(job)
            _release(runtime)
            reason = str(result.finish_reason)
            if kind == "done":
                end = wire.end_comment(result.prompt_tokens, result.completion_tokens, reason)
                yield opening + end + encoder.finish(reason, result.prompt_tokens, result.completion_tokens)
            else:
                end = wire.end_comment(result.prompt_tokens, result.completion_tokens, "error", value)
                yield opening + end + encoder.error(value, "generation_failed")
            return
    finally:
        # No await here: a client that went away cancels this task, and every await would raise again.
        # The engine sees `cancel` within one token and holds its own lock, so the next request waits for it.
        cancel.set()
        _release(runtime)


def _release(runtime: Runtime) -> None:
    runtime.streaming = False
    if runtime.state is WorkerState.BUSY:
        runtime.request_id = None
        runtime.set_state(WorkerState.IDLE)


async def _release_abandoned(runtime: Runtime) -> None:
    """A request whose client left before its stream began would hold the worker busy forever: free it."""
    while True:
        await asyncio.sleep(1.0)
        if runtime.state is WorkerState.BUSY and not runtime.streaming and time.monotonic() - runtime.claimed > 5:
            _release(runtime)


def _first_error(error: pydantic.ValidationError) -> str:
    item = error.errors()[0]
    where = ".".join(str(part) for part in item["loc"])
    message = str(item["msg"]).removeprefix("Value error, ")
    return f"{where}: {message}" if where else message


def _load(runtime: Runtime) -> None:
    options = runtime.options
    started = time.monotonic()

    told = [0.0, 0.0]  # the fraction and the time last told to the hive

    def progress(fraction: float) -> None:
        runtime.progress = fraction
        runtime.notify()
        now = time.monotonic()
        if fraction < 1.0 and fraction - told[0] >= 0.05 and now - told[1] >= 0.5:
            told[:] = [fraction, now]
            _tell_hive(options, "progress", {"progress": round(fraction, 3)})

    try:
        runtime.engine.load(progress)
    except Exception as error:
        runtime.error = f"loading {options.model} failed: {error}"
        log.error(runtime.error)
        runtime.set_state(WorkerState.FAILED)
        _tell_hive(options, "failed", {"reason": runtime.error})
        if runtime.server is not None:
            runtime.server.should_exit = True
        return
    runtime.set_state(WorkerState.IDLE)
    report = wire.ReadyReport(
        port=options.port,
        backend=runtime.engine.name,
        device=runtime.engine.device,
        load_seconds=round(time.monotonic() - started, 3),
    )
    _tell_hive(options, "ready", report.model_dump())


def _tell_hive(options: WorkerOptions, what: str, body: dict[str, Any]) -> None:
    if not options.hive_url:
        return
    headers = {"Authorization": f"Bearer {options.token}"} if options.token else {}
    url = f"{options.hive_url}/v1/workers/{options.worker_id}/{what}"
    try:
        httpx.post(url, json=body, headers=headers, timeout=10.0, trust_env=False).raise_for_status()
    except httpx.HTTPError as error:
        log.error("could not tell the hive this worker is %s: %s", what, error)


def die_with_parent(parent_pid: int | None) -> None:
    """Exit when the hive that started us exits, even if it is killed outright."""
    if parent_pid is None:
        return
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    if os.getppid() != parent_pid:
        os._exit(3)

    def watch() -> None:
        while True:
            time.sleep(1.0)
            if os.getppid() != parent_pid:
                os._exit(3)

    threading.Thread(target=watch, name="parent-watchdog", daemon=True).start()


def serve(options: WorkerOptions) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s worker %(levelname)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    die_with_parent(options.parent_pid)
    engine = backends.create(options.backend, options.model_path, options.device, options.threads)
    runtime = Runtime(options=options, engine=engine)
    app = create_app(runtime)
    config = uvicorn.Config(
        app,
        host=options.host,
        port=options.port,
        log_level="warning",
        access_log=False,
        timeout_graceful_shutdown=3,
        lifespan="off",
    )
    server = uvicorn.Server(config)
    runtime.server = server

    async def main() -> None:
        runtime.loop = asyncio.get_running_loop()
        serving = asyncio.create_task(server.serve())
        guard = asyncio.create_task(_release_abandoned(runtime))
        while not server.started and not serving.done():
            await asyncio.sleep(0.01)
        if server.started:
            threading.Thread(target=_load, args=(runtime,), name="load", daemon=True).start()
        await serving
        guard.cancel()

    aio.run(main())
    with contextlib.suppress(Exception):
        engine.unload()
    code = 1 if runtime.state is WorkerState.FAILED or not server.started else 0
    # Leave without the interpreter's teardown: MLX aborts the process there ("terminate called without an active
    # exception") once it has run in a second thread, which would turn every clean stop into a crash.
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def token_from_file(path: str | None) -> str | None:
    return Path(path).read_text().strip() if path else None
