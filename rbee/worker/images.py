"""An image worker's `POST /v1/execute`: a picture request (api/image_generation.py) painted in a generation
thread, answered whole (`{"images": [...]}`) or, with `stream`, as events: each denoising step, previews when
asked, the pictures, then rbee's end comment. A client that leaves, a time limit or a stopping worker ends the
work at the next step; a stream cut that way ends with an error event, never with pictures that look finished.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import AsyncIterator
from typing import Any

import pydantic
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from rbee import daemon
from rbee.api import image_generation as images
from rbee.api import wire
from rbee.api.state import WorkerState
from rbee.worker import backends, stream
from rbee.worker.backends import diffusers
from rbee.worker.runtime import Active, Runtime, release

log = logging.getLogger("rbee.worker")


async def paint(request: Request, runtime: Runtime, engine: backends.Painter) -> Response:
    try:
        body = images.ImageRequest.model_validate_json(await request.body())
    except pydantic.ValidationError as error:
        return JSONResponse(wire.error_body(daemon.first_error(error), "invalid_request"), 400)
    try:
        engine.check(body)
    except diffusers.Refused as refusal:
        refusal_body = {"message": str(refusal), "code": "unsupported_parameter", "param": refusal.param}
        return JSONResponse({"error": refusal_body}, 400)
    refused = runtime.refusal()
    if refused is not None or body.request_id in runtime.active:
        return JSONResponse(wire.error_body(refused or "the worker is busy", str(runtime.state)), 503)
    claimed = runtime.claim(body.request_id)
    claimed.streaming = True
    painting = events(runtime, claimed, engine, body)
    if body.stream:
        return StreamingResponse(painting, media_type="text/event-stream", headers=stream.SSE_HEADERS)
    return await whole(painting)


async def whole(painting: AsyncIterator[Any]) -> Response:
    """The pictures as one JSON answer (`{"images": [...]}`), or the error that ended the work."""
    async for item in painting:
        if isinstance(item, list):
            return JSONResponse({"images": [picture.model_dump(exclude_none=True) for picture in item]})
        if isinstance(item, Ended):
            return JSONResponse(wire.error_body(str(item), item.code), 500)
    return JSONResponse(wire.error_body("the work ended without pictures", "generation_failed"), 500)


class Ended(Exception):
    """Why a painting ended without pictures; `code` for the error event."""

    def __init__(self, message: str, code: str) -> None:
        super().__init__(message)
        self.code = code


async def events(
    runtime: Runtime, claimed: Active, engine: backends.Painter, body: images.ImageRequest
) -> AsyncIterator[Any]:
    """The painting's stream in the request's vocabulary; for a request answered whole, the finished pictures (a
    list) or why there are none (an Ended) are yielded instead of their events."""
    encoder = images.events_for(body)
    mailbox = stream.Mailbox(asyncio.get_running_loop(), 0.0)
    cancel: threading.Event = claimed.cancel
    timed_out = False

    def produce() -> None:
        try:
            pictures = engine.paint(body, lambda kind, value: mailbox.put((kind, value)), cancel)
            mailbox.put(("done", pictures), final=True)
        except backends.BackendError as error:
            mailbox.put(("error", str(error)), final=True)
        except Exception as error:  # an engine crash must still end the stream with an error event
            log.exception("image generation failed")
            mailbox.put(("error", f"image generation failed: {error}"), final=True)

    def time_is_up() -> None:
        nonlocal timed_out
        timed_out = True
        cancel.set()

    loop = asyncio.get_running_loop()
    timer = loop.call_later(body.time_limit, time_is_up) if body.time_limit else None
    job = runtime.generation_threads.submit(produce)
    try:
        while True:
            items = await mailbox.take(stream.KEEP_ALIVE)
            if not items:  # a slow step: the worker lives, and says so before the queen takes it for frozen
                if body.stream:
                    yield b": keep-alive\n\n"
                continue
            out = []
            for kind, value in items:
                if kind == "step":
                    out.append(encoder.progress(*value))
                elif kind == "partial":
                    out.append(encoder.partial(*value))
            if out and body.stream:
                yield b"".join(out)
            kind, value = items[-1]
            if kind not in ("done", "error"):
                continue
            await asyncio.wrap_future(job)
            stopped = runtime.state is WorkerState.STOPPING
            release(runtime, claimed)  # idle before the last bytes: whoever reads them may send the next request
            if kind == "done":
                if not body.stream:
                    yield value
                    return
                end = wire.end_comment(0, 0, "stop")
                yield encoder.images(value) + end
                return
            if timed_out:
                limit = f"{body.time_limit:g} s"
                ended = Ended(f"the pictures ran past their time limit of {limit} (request_timeout)", "time_limit")
            elif stopped:
                ended = Ended(stream.STOPPED, "worker_stopped")
            else:
                ended = Ended(str(value), "generation_failed")
            if not body.stream:
                yield ended
                return
            yield encoder.error(str(ended), ended.code) + wire.end_comment(0, 0, "error", str(ended))
            return
    finally:
        if timer is not None:
            timer.cancel()
        cancel.set()  # a client that went away: the pipeline stops at its next step
        release(runtime, claimed)
