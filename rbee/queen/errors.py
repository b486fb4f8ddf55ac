"""One exception for every request the queen refuses, and one response shape per audience: OpenAI's error body
for the client APIs (/v1 and the task API), rbee's wire error body for the operator and hive APIs (/v2).

Handlers raise `ClientError`; the route table wraps each handler in the guard of its audience, which turns the
exception into that audience's body. Nothing here knows fleet state.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import pydantic
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response

from rbee import daemon
from rbee.api import anthropic as anthropic_api
from rbee.api import openai as oai
from rbee.api import wire

Handler = Callable[[Request], Awaitable[Response]]
MAX_DEPTH = 64


class ClientError(Exception):
    """A request refused before (or instead of) any work: an HTTP status and what to tell the client."""

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

    def _headers(self) -> dict[str, str] | None:
        return {"Retry-After": str(self.retry_after)} if self.retry_after is not None else None

    def openai(self) -> JSONResponse:
        body = oai.error(str(self), self.kind, self.code, self.param)
        return JSONResponse(body, self.status, headers=self._headers())

    def anthropic(self) -> JSONResponse:
        return JSONResponse(anthropic_api.error(self.status, str(self)), self.status, headers=self._headers())

    def wire(self) -> JSONResponse:
        return JSONResponse(wire.error_body(str(self), self.code or self.kind), self.status, headers=self._headers())


def _answering(shape: Callable[[ClientError], Response]) -> Callable[[Handler], Handler]:
    def wrap(handler: Handler) -> Handler:
        async def guard(request: Request) -> Response:
            try:
                return await handler(request)
            except ClientError as refusal:
                return shape(refusal)

        return guard

    return wrap


openai_errors = _answering(ClientError.openai)
"""The client APIs' guard: refusals in OpenAI's error shape."""
anthropic_errors = _answering(ClientError.anthropic)
"""Anthropic's Messages API's guard: refusals in Anthropic's error shape."""
wire_errors = _answering(ClientError.wire)
"""The operator and hive APIs' guard: refusals in rbee's wire error shape."""


async def read_bounded(request: Request, limit: int) -> bytes:
    """The body, read no further than `limit` bytes (413 past it); kept on the request for its form parser."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise ClientError(413, f"the body is larger than {limit} bytes", code="body_too_large")
    # The server's messages read straight (Starlette's request.stream() is an async generator around the same
    # receive: a tenth of the work before a relayed request's first token, on a body that came in one message).
    if hasattr(request, "_body"):  # read already (by a guard in front)
        if len(request._body) > limit:
            raise ClientError(413, f"the body is larger than {limit} bytes", code="body_too_large")
        return request._body
    parts, size, receive = [], 0, request.receive
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnect()
        part = message.get("body", b"")
        parts.append(part)
        size += len(part)
        if size > limit:
            raise ClientError(413, f"the body is larger than {limit} bytes", code="body_too_large")
        if not message.get("more_body", False):
            break
    raw = request._body = parts[0] if len(parts) == 1 else b"".join(parts)  # .form() and .json() read it
    request._stream_consumed = True
    return raw


async def read_json(request: Request, limit: int) -> Any:
    """The body as JSON, read no further than `limit` bytes (413 past it)."""
    raw = await read_bounded(request, limit)
    try:
        value = json.loads(raw)
    except ValueError:
        raise ClientError(400, "the body must be a JSON object", code="invalid_json") from None
    except RecursionError:
        raise _too_deep_error() from None
    # JSON cannot nest deeper than it opens brackets: most bodies are not walked at all
    if raw.count(b"[") + raw.count(b"{") > MAX_DEPTH and _too_deep(value):
        raise _too_deep_error()
    return value


def _too_deep_error() -> ClientError:
    return ClientError(400, f"the body nests deeper than {MAX_DEPTH} levels", code="too_deep")


def _too_deep(value: Any) -> bool:
    """Whether JSON nests deeper than MAX_DEPTH (walked without recursion)."""
    pending: list[tuple[Any, int]] = [(value, 1)]
    while pending:
        item, depth = pending.pop()
        if isinstance(item, dict | list):
            if depth > MAX_DEPTH:
                return True
            pending.extend((child, depth + 1) for child in (item.values() if isinstance(item, dict) else item))
    return False


async def read_object(request: Request, limit: int) -> dict[str, Any]:
    raw = await read_json(request, limit)
    if not isinstance(raw, dict):
        raise ClientError(400, "the body must be a JSON object", code="invalid_json")
    request.scope["rbee.object"] = raw  # as the client sent it: what a provider is given (federation.py)
    return raw


Shape = TypeVar("Shape", bound=pydantic.BaseModel)


async def read_model(request: Request, limit: int, shape: type[Shape]) -> Shape:
    """The body validated as `shape` (400 naming the first field wrong), read no further than `limit` bytes.
    Validated from its bytes in one pass, where JSON parsed into Python first cost as much again; only a body that
    opens more brackets than MAX_DEPTH is parsed first, to be walked for its depth."""
    raw = await read_bounded(request, limit)
    if raw.count(b"[") + raw.count(b"{") > MAX_DEPTH:
        value = await read_object(request, limit)
        try:
            return shape.model_validate(value)
        except pydantic.ValidationError as failure:
            raise invalid(failure) from None
    try:
        return shape.model_validate_json(raw)
    except pydantic.ValidationError as failure:
        first = failure.errors()[0]
        if not first["loc"] and first["type"] in ("json_invalid", "model_type"):  # not JSON, or not an object
            raise ClientError(400, "the body must be a JSON object", code="invalid_json") from None
        raise invalid(failure) from None


def sent_object(request: Request) -> dict[str, Any]:
    """The body as the client sent it, parsed (what a provider is given: federation.py); the request's body was
    read and validated as an object already."""
    value = request.scope.get("rbee.object")
    if value is None:
        value = request.scope["rbee.object"] = json.loads(request._body)
    return value if isinstance(value, dict) else {}


def invalid(failure: pydantic.ValidationError) -> ClientError:
    """A body that does not validate: 400, naming the field (`messages.0.role: Input should be ...`)."""
    param = ".".join(str(part) for part in failure.errors()[0]["loc"])
    return ClientError(400, daemon.first_error(failure), param=param or None)
