"""ASGI plumbing for the relay: a response that writes each chunk straight to the server, and the wrapper that
hands it the server's own `send`."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.requests import ClientDisconnect, Request
from starlette.responses import PlainTextResponse, Response

log = logging.getLogger("rbee.queen")

SSE = "text/event-stream; charset=utf-8"
Deliver = Callable[[bytes], Awaitable[None]]
Produce = Callable[[Deliver], Awaitable[None]]
"""A stream's source: called once with where each chunk goes, it returns when the stream has ended."""


class RelayResponse(Response):
    """A stream relayed chunk by chunk straight to the server's `send` (see `RawSend`), with a watcher that
    cancels the relay the moment the client disconnects, so its worker stops within a token. `abandon` gives its
    source up unrun (a response that will not be sent)."""

    def __init__(
        self, produce: Produce, abandon: Callable[[], None] = lambda: None, media_type: str = SSE, **headers: str
    ) -> None:
        self.status_code = 200
        self.background = None
        self.raw_headers = [
            (b"content-type", media_type.encode()),
            (b"cache-control", b"no-cache"),
            (b"x-accel-buffering", b"no"),
            *((name.lower().replace("_", "-").encode(), value.encode()) for name, value in headers.items()),
        ]
        self.produce, self.abandon = produce, abandon

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

        async def deliver(chunk: bytes) -> None:
            await send({"type": "http.response.body", "body": chunk, "more_body": True})

        watcher = asyncio.ensure_future(watch())
        try:
            await self.produce(deliver)
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

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            scope["rbee.send"] = send
        await self.app(scope, receive, send)


class DirectRoutes:
    """The generation endpoints served past Starlette's middleware and route matching: the same handler, Request
    and Response, found with one lookup. Starlette's layers cost a tenth of a relayed request's CPU before its
    first token. Every other request goes through the app."""

    def __init__(self, app: Any, routes: dict[str, Callable[[Request], Awaitable[Response]]]) -> None:
        self.app, self.routes = app, routes

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        handler = self.routes.get(scope["path"]) if scope["type"] == "http" and scope["method"] == "POST" else None
        if handler is None:
            await self.app(scope, receive, send)
            return
        scope["app"] = self.app  # what request.app, and so the handler's queen, is read from
        try:
            response = await handler(Request(scope, receive))
        except ClientDisconnect:
            return  # the client left while sending its body: nobody to answer
        except Exception:  # what Starlette's outermost middleware does with a handler's bug
            log.exception("POST %s failed", scope["path"])
            response = PlainTextResponse("Internal Server Error", 500)
        await response(scope, receive, send)
