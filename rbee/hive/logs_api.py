"""A hive's logs over its own API (its credential): GET /v1/logs for the hive daemon's, ?worker=ID for one of its
workers' (even after the worker ended); `lines` (default 200), `since` (epoch seconds), and `follow=1` for an SSE
stream of `{"line"}` events that goes on with each new line, saying keep-alive every 15 s. `rbee logs` reads a
remote hive's logs this way, with no SSH session.

Only the hive's own files are read: a worker id must be one this hive started, and no path comes from a request.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator
from pathlib import Path

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from rbee.api import wire
from rbee.hive.catalog import Catalog
from rbee.infra import logs

WORKER_ID = re.compile(r"w-\d{1,9}")
DEFAULT_LINES = 200


def _line(text: str) -> bytes:
    return f"data: {json.dumps({'line': text})}\n\n".encode()


async def _stream(backlog: list[str], path: Path, offset: int) -> AsyncIterator[bytes]:
    for old in backlog:
        yield _line(old)
    async for new in logs.follow(path, offset):
        yield b": keep-alive\n\n" if new is None else _line(new)


async def read(request: Request, logs_dir: Path, catalog: Catalog) -> Response:
    query = request.query_params
    worker = query.get("worker")
    if worker is None:
        path = logs_dir / "hive.log"
    elif WORKER_ID.fullmatch(worker) and catalog.knows_worker(worker):
        path = logs_dir / f"worker-{worker}.log"
    else:
        return JSONResponse(wire.error_body(f"no worker {worker} was ever started on this hive", "not_found"), 404)
    try:
        count = int(query.get("lines", DEFAULT_LINES))
        since = float(query["since"]) if "since" in query else None
    except ValueError:
        return JSONResponse(wire.error_body("lines and since must be numbers", "invalid_query"), 400)
    backlog, end = await asyncio.to_thread(logs.last_lines, path, count, since)
    if query.get("follow") not in ("1", "true"):
        return JSONResponse({"lines": backlog})
    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    return StreamingResponse(_stream(backlog, path, end), media_type="text/event-stream", headers=headers)
