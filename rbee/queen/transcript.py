"""A transcript of what the queen served, for proof bundles (the test suite's record of each scenario): with
`RBEE_TRANSCRIPT=FILE` in its environment, the queen appends one JSON line per request it answers — when, the
method and path, the status, the request's body and what it sent back (an SSE stream as the text it was), each
cut at MAX_BODY. Off unless asked: nothing is recorded and nothing is paid on the relay.

No header is ever written (credentials travel in headers, never in bodies), nor hives' heartbeats (their state,
every few seconds) or the web UI's files.
"""

from __future__ import annotations

import time
from typing import Any

from rbee.clients.transcript import MAX_BODY, append, body

SKIPPED = ("/v2/hives/", "/ui")


class Transcript:
    def __init__(self, app: Any, path: str) -> None:
        self.app, self.path = app, path

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["path"].startswith(SKIPPED):
            await self.app(scope, receive, send)
            return
        started, asked, answered, status = time.time(), bytearray(), bytearray(), [0]

        async def receiving() -> Any:
            message = await receive()
            if message["type"] == "http.request" and len(asked) < MAX_BODY:
                asked.extend(message.get("body", b""))
            return message

        async def sending(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                status[0] = int(message["status"])
            elif message["type"] == "http.response.body" and len(answered) < MAX_BODY:
                answered.extend(message.get("body", b""))
            await send(message)

        try:
            await self.app(scope, receiving, sending)
        finally:
            record = {
                "at": started,
                "who": "queen",
                "method": scope["method"],
                "path": scope["path"],
                "query": scope.get("query_string", b"").decode("latin-1"),
                "status": status[0],
                "seconds": round(time.time() - started, 4),
                "request": body(bytes(asked)) if asked else None,
                "response": body(bytes(answered)) if answered else None,
            }
            append(self.path, record)
