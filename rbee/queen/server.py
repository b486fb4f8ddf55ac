"""The queen's route table: each path, its handler, and the guard chain of its audience. Nothing else.

- open: GET /health, /openapi.json, and the web UI's files under /ui/ (web_ui.py; they hold no data)
- clients (an API key, OpenAI's error shape): the OpenAI API under /v1 (text, embeddings, rerank, speech,
  transcription, image generation), rbee's task API under /v2/tasks, and GET /metrics; Anthropic's Messages API,
  POST /v1/messages, in Anthropic's error shape
- the operator (its credential, rbee's wire error shape): /v2/spec, plan, models, status, traffic, route, events,
  reconcile, shutdown
- each hive (its own credential): POST /v2/hives/{name}/heartbeat
- the platform (the operator): /v2/usage, /v2/platform/providers; a provider registering itself may instead
  carry the registration key hive.yaml names (queen.federation.registration_key)

Every request first passes the browser guard (origins.py): Host, Origin and Content-Type.
"""

from __future__ import annotations

from starlette import routing
from starlette.applications import Starlette

from rbee.queen import (
    anthropic_api,
    auth,
    catalog_api,
    errors,
    image_api,
    openai_api,
    operator_api,
    origins,
    plan_api,
    platform_api,
    rerank_api,
    responses_api,
    speech_api,
    task_api,
    transcription_api,
    web_ui,
)
from rbee.queen.asgi import DirectRoutes, RawSend
from rbee.queen.errors import Handler
from rbee.queen.parts import Queen


def create_app(queen: Queen) -> RawSend:
    operator_only = auth.operator_only(queen.credentials)
    hive_only = auth.hive_only(queen.credentials)

    def client(handler: Handler) -> Handler:
        return errors.openai_errors(handler)

    def anthropic_client(handler: Handler) -> Handler:
        return errors.anthropic_errors(handler)

    def operator(handler: Handler) -> Handler:
        return errors.wire_errors(operator_only(handler))

    def hive(handler: Handler) -> Handler:
        return errors.wire_errors(hive_only(handler))

    def route(path: str, handler: Handler, *methods: str) -> routing.Route:
        return routing.Route(path, handler, methods=list(methods) or None)

    generation = {  # also served past Starlette (asgi.DirectRoutes): the hot path
        "/v1/chat/completions": client(openai_api.chat_completions),
        "/v1/completions": client(openai_api.completions),
        "/v1/messages": anthropic_client(anthropic_api.messages),
        "/v1/responses": client(responses_api.create),
    }
    app = Starlette(
        routes=[
            route("/health", operator_api.health),
            route("/metrics", client(operator_api.metrics)),
            route("/openapi.json", operator_api.openapi),
            route("/ui", web_ui.to_index),
            route("/ui/", web_ui.page),
            route("/ui/{name}", web_ui.page),
            route("/v1/models", client(openai_api.list_models)),
            route("/v1/chat/completions", generation["/v1/chat/completions"], "POST"),
            route("/v1/completions", generation["/v1/completions"], "POST"),
            route("/v1/embeddings", client(openai_api.embeddings), "POST"),
            route("/v1/messages", generation["/v1/messages"], "POST"),
            route("/v1/messages/count_tokens", anthropic_client(anthropic_api.count_tokens), "POST"),
            route("/v1/responses", generation["/v1/responses"], "POST"),
            route("/v1/rerank", client(rerank_api.create), "POST"),
            route("/v1/audio/speech", client(speech_api.create), "POST"),
            route("/v1/audio/transcriptions", client(transcription_api.transcriptions), "POST"),
            route("/v1/audio/translations", client(transcription_api.translations), "POST"),
            route("/v1/images/generations", client(image_api.generations), "POST"),
            route("/v2/tasks", client(task_api.create_task), "POST"),
            route("/v2/tasks/{id}/events", client(task_api.task_events)),
            route("/v2/tasks/{id}", client(task_api.cancel_task), "DELETE"),
            route("/v2/spec", operator(operator_api.put_spec), "PUT"),
            route("/v2/spec", operator(operator_api.get_spec), "GET"),
            route("/v2/status", operator(operator_api.status)),
            route("/v2/traffic", operator(operator_api.traffic)),
            route("/v2/plan", operator(plan_api.plan), "POST"),
            route("/v2/models/{model}/pull", operator(catalog_api.pull), "POST"),
            route("/v2/models/{model}", operator(catalog_api.remove), "DELETE"),
            route("/v2/plan", operator(plan_api.current), "GET"),
            route("/v2/route", operator(operator_api.explain)),
            route("/v2/route/policy", operator(operator_api.policy)),
            route("/v2/events", operator(operator_api.events)),
            route("/v2/reconcile", operator(operator_api.reconcile), "PUT"),
            route("/v2/admin/shutdown", operator(operator_api.shutdown), "POST"),
            route("/v2/hives/{name}/heartbeat", hive(operator_api.heartbeat), "POST"),
            route("/v2/usage", operator(platform_api.usage)),
            route("/v2/platform/providers", operator(platform_api.providers), "GET"),
            route("/v2/platform/providers", errors.wire_errors(platform_api.register), "POST"),
            route("/v2/platform/providers/{name}", operator(platform_api.unregister), "DELETE"),
        ]
    )
    app.state.queen = queen
    return RawSend(origins.BrowserGuard(DirectRoutes(app, generation), lambda: queen.fleet.spec))
