"""The queen's OpenAPI document, built from the same pydantic models that validate requests."""

from __future__ import annotations

from typing import Any

import pydantic

from rbee import __version__
from rbee.api import image_generation, openai, speech, wire

ERROR = {
    "type": "object",
    "properties": {
        "error": {
            "type": "object",
            "properties": {
                "message": {"type": "string"},
                "type": {"type": "string"},
                "param": {"type": ["string", "null"]},
                "code": {"type": ["string", "null"]},
            },
        }
    },
}


def _body(schema: str) -> dict[str, Any]:
    return {"required": True, "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{schema}"}}}}


def _responses(ok: str, stream: bool = False) -> dict[str, Any]:
    content: dict[str, Any] = {"application/json": {"schema": {"type": "object"}}}
    if stream:
        content["text/event-stream"] = {"schema": {"type": "string"}}
    out: dict[str, Any] = {"200": {"description": ok, "content": content}}
    for status, why in [
        ("400", "invalid request"),
        ("401", "missing or wrong API key"),
        ("403", "key not allowed this model"),
        ("404", "unknown model"),
        ("413", "body too large"),
        ("429", "per-key concurrency limit (Retry-After)"),
        ("502", "the worker failed"),
        ("503", "queue full or no worker (Retry-After)"),
        ("504", "no worker free before the deadline"),
    ]:
        out[status] = {"description": why, "content": {"application/json": {"schema": ERROR}}}
    return out


def openapi() -> dict[str, Any]:
    schemas: dict[str, Any] = {}
    models: list[tuple[str, type[pydantic.BaseModel]]] = [
        ("ChatRequest", openai.ChatRequest),
        ("CompletionRequest", openai.CompletionRequest),
        ("TaskRequest", wire.ExecuteRequest),
        ("ImageGenerationRequest", image_generation.ImageGenerationRequest),
        ("SpeechRequest", speech.SpeechRequest),
    ]
    for name, model in models:
        schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
        schemas.update(schema.pop("$defs", {}))
        schemas[name] = schema
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "rbee queen",
            "version": __version__,
            "description": "OpenAI-compatible inference across your machines, plus rbee's task API.",
        },
        "components": {
            "schemas": schemas,
            "securitySchemes": {"apiKey": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{"apiKey": []}],
        "paths": {
            "/v1/models": {"get": {"summary": "Models served", "responses": _responses("a list of models")}},
            "/v1/chat/completions": {
                "post": {
                    "summary": "Chat completion (stream with stream: true)",
                    "requestBody": _body("ChatRequest"),
                    "responses": _responses("a completion or an SSE stream", True),
                }
            },
            "/v1/completions": {
                "post": {
                    "summary": "Text completion",
                    "requestBody": _body("CompletionRequest"),
                    "responses": _responses("a completion or an SSE stream", True),
                }
            },
            "/v1/images/generations": {
                "post": {
                    "summary": "Pictures from a prompt (an image model; stream: true for progress and previews)",
                    "requestBody": _body("ImageGenerationRequest"),
                    "responses": _responses("b64_json pictures, or OpenAI's image stream", True),
                }
            },
            "/v1/audio/speech": {
                "post": {
                    "summary": "Speech from text (a speech model), streamed as it is made",
                    "requestBody": _body("SpeechRequest"),
                    "responses": _responses("audio/mpeg, audio/wav or audio/pcm"),
                }
            },
            "/v2/tasks": {
                "post": {
                    "summary": "Start a task; read its events at /v2/tasks/{id}/events",
                    "requestBody": _body("TaskRequest"),
                    "responses": _responses("the task id"),
                }
            },
            "/v2/tasks/{id}/events": {
                "get": {
                    "summary": "The task's events as SSE (re-attachable while it runs)",
                    "parameters": [{"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}],
                    "responses": _responses("token, done and error events", True),
                }
            },
            "/v2/tasks/{id}": {
                "delete": {
                    "summary": "Cancel a task",
                    "parameters": [{"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}],
                    "responses": _responses("cancelled"),
                }
            },
            "/metrics": {
                "get": {
                    "summary": "Prometheus metrics",
                    "security": [],
                    "responses": {"200": {"description": "text exposition format"}},
                }
            },
        },
    }
