"""rbee's task API: POST /v2/tasks, GET /v2/tasks/{id}/events (SSE, re-attachable while the task runs),
DELETE /v2/tasks/{id}. Refusals come in OpenAI's error shape, as on the rest of the client API."""

from __future__ import annotations

import pydantic
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from rbee.api import openai as oai
from rbee.api import wire
from rbee.queen import parts
from rbee.queen.auth import ADMIN_KEY
from rbee.queen.errors import ClientError, invalid, read_object
from rbee.queen.openai_api import require_text_model
from rbee.queen.scheduling import Ask, prefix_of
from rbee.queen.tasks import Task

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


async def create_task(request: Request) -> Response:
    queen = parts.of(request)
    key = queen.fleet.keys.authenticate(request)
    raw = await read_object(request, queen.fleet.max_body)
    model, hive = raw.pop("model", None), raw.pop("hive", None)
    if not isinstance(model, str):
        raise ClientError(400, "the body must be a JSON object with a 'model'", param="model")
    queen.fleet.keys.permit(key, model)
    task_id = oai.new_id("task")
    try:
        execute = wire.ExecuteRequest.model_validate({**raw, "request_id": task_id, "format": wire.StreamFormat.RBEE})
    except pydantic.ValidationError as failure:
        raise invalid(failure) from None
    require_text_model(queen, model)  # 404 for a model hive.yaml does not name; an embedding or speech model's 400
    task = Task(task_id, model, key.name if key else None)
    queen.tasks.add(task)
    texts = [m.content or "" for m in execute.messages] if execute.messages is not None else [execute.prompt or ""]
    pinned = hive if isinstance(hive, str) else None
    ask = Ask(model, pinned, key.name if key else None, sum(map(len, texts)), prefix_of(texts))
    queen.tasks.start(queen.dispatch, task, ask, key, execute)
    return JSONResponse({"task_id": task_id, "events": f"/v2/tasks/{task_id}/events"}, 201)


def _task(request: Request) -> Task:
    """The task named in the path, for the key that created it (another key is told there is no such task)."""
    queen = parts.of(request)
    key = queen.fleet.keys.authenticate(request)
    task = queen.tasks.get(request.path_params["id"])
    if task is None or (key is not None and key.name not in (task.key, ADMIN_KEY.name)):
        raise ClientError(404, "no such task", code="not_found")
    return task


async def task_events(request: Request) -> Response:
    return StreamingResponse(_task(request).replay(), media_type="text/event-stream", headers=SSE_HEADERS)


async def cancel_task(request: Request) -> Response:
    task = _task(request)
    await task.cancel()
    return JSONResponse({"task_id": task.id, "finished": True})
