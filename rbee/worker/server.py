"""The worker daemon: `rbee worker serve`. One model replica in one process, serving as many requests at once as
its engine has slots (one for an engine with a single context).

States: loading -> idle <-> busy (at least one request) -> stopping. It tells its hive when it is ready (or why
it failed), and it exits when its hive dies (parent-death signal, and a watchdog on the parent pid where that
is unavailable).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import os
import socket
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pydantic
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from rbee import daemon
from rbee.api import audio as audio_wire
from rbee.api import wire
from rbee.api.state import WorkerState
from rbee.clients import tls
from rbee.clients.hive import LoadingReports
from rbee.worker import audio, backends, images, stream, tools
from rbee.worker.runtime import Runtime, WorkerOptions, release, release_abandoned

log = logging.getLogger("rbee.worker")
SSE_HEADERS = stream.SSE_HEADERS
NOT_TEXT = (backends.Embedder, backends.Reranker, backends.Speaker, backends.Transcriber, backends.Painter)
__all__ = ["Runtime", "WorkerOptions", "create_app", "serve"]


def create_app(runtime: Runtime) -> Starlette:
    guarded = daemon.token_guard(runtime.options.token)

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
        if isinstance(engine, backends.Reranker):
            return await rerank(request, engine)
        if isinstance(engine, backends.Speaker):
            return await speak(request, engine)
        if isinstance(engine, backends.Transcriber):
            return await transcribe(request, engine)
        if isinstance(engine, backends.Painter):
            return await images.paint(request, runtime, engine)
        try:
            body = wire.ExecuteRequest.model_validate_json(await request.body())
        except pydantic.ValidationError as error:
            return JSONResponse(wire.error_body(daemon.first_error(error), "invalid_request"), 400)
        refused = runtime.refusal()
        if refused is not None:
            return JSONResponse(wire.error_body(refused, str(runtime.state)), 503)
        if body.request_id in runtime.active:
            return JSONResponse(wire.error_body(f"request {body.request_id} is already running", "conflict"), 409)
        try:
            prompt, options = prompt_of(engine, body)
        except backends.PromptTooLong as refusal:
            return JSONResponse({"error": {"message": str(refusal), "code": refusal.code, "param": "messages"}}, 400)
        unconstrained = backends.cannot_constrain(engine, options.constraint)
        if unconstrained is not None:
            return JSONResponse(
                {"error": {"message": unconstrained, "code": "unsupported_parameter", "param": "response_format"}}, 400
            )
        unserved = backends.cannot_sample(engine, options)
        if unserved is not None:
            param, message = unserved
            return JSONResponse({"error": {"message": message, "code": "unsupported_parameter", "param": param}}, 400)
        too_long = backends.room_for(engine, prompt)
        if too_long is not None:
            param = "messages" if body.messages is not None else "prompt"
            return JSONResponse({"error": {"message": str(too_long), "code": too_long.code, "param": param}}, 400)
        encoder = stream.encoder_for(body, runtime.options.model)
        claimed = runtime.claim(body.request_id)
        return StreamingResponse(
            stream.stream(runtime, claimed, engine, prompt, options, encoder),
            media_type="text/event-stream",
            headers=SSE_HEADERS,
        )

    async def count(request: Request) -> Response:
        """How many tokens a request's prompt is, counted by the model's tokenizer as generation would see it
        (chat template and tool instructions included); nothing is generated and no slot is taken."""
        engine = runtime.engine
        counter = getattr(engine, "count_tokens", None)
        if (
            isinstance(
                engine, (backends.Embedder, backends.Reranker, backends.Speaker, backends.Transcriber, backends.Painter)
            )
            or counter is None
            or runtime.state not in (WorkerState.IDLE, WorkerState.BUSY)
        ):
            return JSONResponse(wire.error_body(runtime.refusal() or "this worker counts no tokens", "busy"), 503)
        try:
            body = wire.ExecuteRequest.model_validate_json(await request.body())
        except pydantic.ValidationError as error:
            return JSONResponse(wire.error_body(daemon.first_error(error), "invalid_request"), 400)
        try:
            prompt, _ = prompt_of(engine, body)
        except backends.PromptTooLong as refusal:
            return JSONResponse({"error": {"message": str(refusal), "code": refusal.code, "param": "messages"}}, 400)
        tokens = await asyncio.get_running_loop().run_in_executor(None, counter, prompt)
        return JSONResponse({"input_tokens": tokens})

    async def embed(request: Request, engine: backends.Embedder) -> Response:
        try:
            body = wire.EmbedRequest.model_validate_json(await request.body())
        except pydantic.ValidationError as error:
            return JSONResponse(wire.error_body(daemon.first_error(error), "invalid_request"), 400)
        answer = await whole(body.request_id, "embedding", engine.embed, body.input)
        if isinstance(answer, Response):
            return answer
        vectors, tokens = answer
        if body.encoding == "base64":
            encoded = [base64.b64encode(row.astype("<f4").tobytes()).decode() for row in vectors]
            return JSONResponse({"embeddings": encoded, "prompt_tokens": tokens})
        return JSONResponse({"embeddings": vectors.tolist(), "prompt_tokens": tokens})

    async def rerank(request: Request, engine: backends.Reranker) -> Response:
        try:
            body = wire.RerankRequest.model_validate_json(await request.body())
        except pydantic.ValidationError as error:
            return JSONResponse(wire.error_body(daemon.first_error(error), "invalid_request"), 400)
        answer = await whole(body.request_id, "reranking", engine.rerank, body.query, body.documents)
        if isinstance(answer, Response):
            return answer
        scores, tokens = answer
        return JSONResponse({"scores": scores, "prompt_tokens": tokens})

    async def speak(request: Request, engine: backends.Speaker) -> Response:
        try:
            body = audio_wire.SpeakRequest.model_validate_json(await request.body())
        except pydantic.ValidationError as error:
            return JSONResponse(wire.error_body(daemon.first_error(error), "invalid_request"), 400)
        voice = engine.voice(body.voice)
        if voice is None:
            message = f"this model has no voice {body.voice}; its voices: {engine.voices()}"
            return JSONResponse({"error": {"message": message, "code": "invalid_voice", "param": "voice"}}, 400)
        unserved = audio.unserved(body.format)
        if unserved is not None:
            refusal = {"message": unserved, "code": "unsupported_parameter", "param": "response_format"}
            return JSONResponse({"error": refusal}, 400)
        refused = runtime.refusal()
        if refused is not None or body.request_id in runtime.active:
            return JSONResponse(wire.error_body(refused or "the worker is busy", str(runtime.state)), 503)
        claimed = runtime.claim(body.request_id)
        claimed.streaming = True

        async def spoken() -> AsyncIterator[bytes]:
            # A stop or cancel raises rather than ends: the response is then cut short, never a whole-looking file.
            try:
                async for chunk in audio.encoded(body.format, engine.rate, engine.speak(body.input, voice, body.speed)):
                    if claimed.cancel.is_set():
                        raise backends.BackendError(stream.STOPPED)
                    yield chunk
            finally:
                release(runtime, claimed)

        headers = {"X-Sample-Rate": str(engine.rate), "Cache-Control": "no-cache"}
        return StreamingResponse(spoken(), media_type=audio_wire.AUDIO_TYPES[body.format], headers=headers)

    async def transcribe(request: Request, engine: backends.Transcriber) -> Response:
        try:
            body, data = audio_wire.unframed(await request.body())
        except pydantic.ValidationError as error:
            return JSONResponse(wire.error_body(daemon.first_error(error), "invalid_request"), 400)
        except ValueError as error:
            return JSONResponse(wire.error_body(str(error), "invalid_request"), 400)
        try:
            samples, rate = audio.decode(data)
            engine.check_language(body.language)
        except (audio.Undecodable, backends.BackendError) as refusal:
            param = "file" if isinstance(refusal, audio.Undecodable) else "language"
            return JSONResponse({"error": {"message": str(refusal), "code": "invalid_value", "param": param}}, 400)
        work = (samples, rate, body.language, body.task, body.prompt, body.temperature)
        answer = await whole(body.request_id, "transcription", engine.transcribe, *work)
        return answer if isinstance(answer, Response) else JSONResponse(answer)

    async def whole(request_id: str, what: str, work: Callable[..., Any], *args: Any) -> Any:
        """A request answered whole (embeddings, scores): it holds a slot while `work` runs in a generation
        thread; a Response when it was refused or failed."""
        refused = runtime.refusal()
        if refused is not None or request_id in runtime.active:
            return JSONResponse(wire.error_body(refused or "the worker is busy", str(runtime.state)), 503)
        claimed = runtime.claim(request_id)
        claimed.streaming = True
        try:
            return await asyncio.get_running_loop().run_in_executor(runtime.generation_threads, work, *args)
        except Exception as error:
            log.exception("%s failed", what)
            return JSONResponse(wire.error_body(f"{what} failed: {error}", "generation_failed"), 500)
        finally:
            release(runtime, claimed)

    async def cancel(request: Request) -> Response:
        try:
            wanted = json.loads(await request.body() or b"{}").get("request_id")
        except (ValueError, AttributeError):
            return JSONResponse(wire.error_body("the body must be JSON", "invalid_request"), 400)
        # No id: every request in flight (the hive's "stop what you are doing").
        hits = [active for active in runtime.active.values() if wanted in (None, active.request_id)]
        for active in hits:
            active.cancel.set()
        return JSONResponse({"cancelled": bool(hits), "request_id": hits[0].request_id if len(hits) == 1 else None})

    async def shutdown(request: Request) -> Response:
        stop(runtime)
        return JSONResponse({"state": "stopping"}, 202)

    return Starlette(
        routes=[
            Route("/health", health),
            Route("/v1/ready", guarded(ready)),
            Route("/v1/loading/progress", guarded(loading_progress)),
            Route("/v1/execute", guarded(execute), methods=["POST"]),
            Route("/v1/count", guarded(count), methods=["POST"]),
            Route("/v1/cancel", guarded(cancel), methods=["POST"]),
            Route("/v1/admin/shutdown", guarded(shutdown), methods=["POST"]),
        ]
    )


def stop(runtime: Runtime) -> None:
    """Stop now, asked by the hive or by a signal (SIGTERM, also what a dead hive's parent-death signal sends): the
    generation in progress ends within a token and its stream says the worker stopped; nothing waits for it to
    finish its answer."""
    runtime.set_state(WorkerState.STOPPING)
    for request in runtime.active.values():
        request.cancel.set()
    if runtime.server is not None:
        runtime.server.should_exit = True


def load(runtime: Runtime) -> None:
    """Load the model (in a thread of its own) and tell the hive how it goes."""
    options = runtime.options
    hive = LoadingReports(options.hive_url, options.worker_id, options.token)
    started = time.monotonic()

    told = [0.0, 0.0]  # the fraction and the time last told to the hive

    def progress(fraction: float) -> None:
        runtime.progress = fraction
        runtime.notify()
        now = time.monotonic()
        if fraction < 1.0 and fraction - told[0] >= 0.05 and now - told[1] >= 0.5:
            told[:] = [fraction, now]
            hive.progress(fraction)

    try:
        runtime.engine.load(progress)
    except Exception as error:
        runtime.error = f"loading {options.model} failed: {error}"
        log.error(runtime.error)
        runtime.set_state(WorkerState.FAILED)
        hive.failed(runtime.error)
        if runtime.server is not None:
            runtime.server.should_exit = True
        return
    runtime.set_state(WorkerState.IDLE)
    log.info(
        "%s serves %s on %s (%s, %s, %d slots), loaded in %.1f s",
        options.worker_id,
        options.model,
        options.port,
        runtime.engine.name,
        runtime.engine.device,
        runtime.slots,
        time.monotonic() - started,
    )
    hive.ready(
        wire.ReadyReport(
            port=options.port,
            backend=runtime.engine.name,
            device=runtime.engine.device,
            load_seconds=round(time.monotonic() - started, 3),
            slots=runtime.slots,
        )
    )


def serve(options: WorkerOptions) -> None:
    daemon.configure_logging("%(asctime)s worker %(levelname)s %(message)s")
    daemon.die_with_parent(options.parent_pid)
    engine = backends.create(
        options.backend,
        options.model_path,
        options.device,
        options.threads,
        (options.slots, options.context),
        options.mmproj_path,
    )
    runtime = Runtime(options=options, engine=engine)
    tls.pin(options.ca_file)  # its reports go to its hive over TLS when the hive serves TLS
    server = daemon.server(create_app(runtime), f"{options.host}:{options.port}", graceful=3, tls=options.tls)
    runtime.server = server

    async def main() -> None:
        runtime.loop = asyncio.get_running_loop()
        guard = asyncio.create_task(release_abandoned(runtime))
        bound = socket.socket(fileno=options.listen_fd) if options.listen_fd is not None else None
        serving = await daemon.start(server, lambda: stop(runtime), bound)
        if server.started:
            threading.Thread(target=load, args=(runtime,), name="load", daemon=True).start()
        await serving
        guard.cancel()

    daemon.run(main())
    with contextlib.suppress(Exception):
        engine.unload()
    code = 1 if runtime.state is WorkerState.FAILED or not server.started else 0
    # Leave without the interpreter's teardown: MLX aborts the process there ("terminate called without an active
    # exception") once it has run in a second thread, which would turn every clean stop into a crash.
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def prompt_of(engine: backends.Backend, body: wire.ExecuteRequest) -> tuple[str, wire.ExecuteRequest]:
    """The prompt the engine sees (a chat rendered by the model's template, with the tools' instructions when
    the answer may be a call) and the request's options with the template's stop strings added."""
    if body.messages is None:
        return body.prompt or "", body
    chat = body.messages
    if any(message.images for message in chat) and not getattr(engine, "sees", False):
        raise backends.ImageRefused(f"the {engine.name} backend sees no images; serve the model with gguf and mmproj")
    if body.constraint is not None and body.constraint.kind == "tool_call":
        chat = tools.with_instructions(chat, body.constraint)
    prompt, template_stops = engine.render_chat(chat)
    return prompt, body.model_copy(update={"stop": (*body.stop, *template_stops)})


def token_from_file(path: str | None) -> str | None:
    return Path(path).read_text().strip() if path else None
