"""The operator's API (the keeper and the web UI, with the operator's credential): PUT /v2/spec, GET /v2/spec,
GET /v2/status (+ follow), GET /v2/traffic, GET /v2/route, GET /v2/events (+ follow), PUT /v2/reconcile,
POST /v2/admin/shutdown; each hive's POST /v2/hives/{name}/heartbeat; and the open GET /health, /metrics,
/openapi.json. Refusals come in rbee's wire error shape."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator

import pydantic
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from rbee import __version__
from rbee.api.state import HiveState
from rbee.queen import docs, parts, ranking
from rbee.queen.errors import ClientError, read_json, read_object
from rbee.queen.fleet import UnknownHive
from rbee.queen.scheduling import Ask, prefix_of
from rbee.queen.traffic import BUCKET
from rbee.spec import checks
from rbee.spec.policy import PolicyError, PolicyRef
from rbee.spec.schema import HiveFile

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
WATCH_TICK = 0.5
"""How often a followed status is looked at: a worker's change reaches the page within half a second of the
queen learning it (its hive sends a heartbeat at once on every worker change)."""
KEEP_FRESH = 5.0
_AGES = ("heartbeats", "observed_at")


async def health(request: Request) -> Response:
    return JSONResponse({"status": "ok", "version": __version__, "generation": parts.of(request).fleet.generation})


async def metrics(request: Request) -> Response:
    """Prometheus metrics, for any API key (they name models, hives and keys)."""
    queen = parts.of(request)
    queen.fleet.keys.authenticate(request)
    return Response(queen.metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")


async def openapi(request: Request) -> Response:
    return JSONResponse(docs.openapi())


async def put_spec(request: Request) -> Response:
    """Make a hive.yaml the desired state: `{"spec", "source", "policy": {"name", "sha256"} | null}`. A policy
    is named, never sent: the queen takes only a file on its own disk with that digest."""
    queen = parts.of(request)
    raw = await read_json(request, queen.fleet.max_body)
    try:
        spec = HiveFile.model_validate(raw.get("spec") if isinstance(raw, dict) else None)
    except pydantic.ValidationError as failure:
        raise ClientError(400, f"not a valid hive.yaml: {failure.errors()[0]['msg']}", code="invalid_spec") from None
    # The same cross-section rules as `rbee validate`: a spec the keeper would refuse is refused here too.
    problems = checks.check(spec)
    if problems:
        first = problems[0]
        where = ".".join(str(part) for part in first.location)
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise ClientError(400, f"not a valid hive.yaml: {where}: {first.message}{more}", code="invalid_spec")
    if "policy_source" in raw:
        raise ClientError(
            400, "the queen takes no policy code over the network; name it: policy", code="invalid_policy"
        )
    try:
        named = PolicyRef.model_validate(raw["policy"]) if raw.get("policy") is not None else None
    except pydantic.ValidationError as failure:
        raise ClientError(400, f"policy: {failure.errors()[0]['msg']}", code="invalid_policy") from None
    try:
        generation, changed = queen.fleet.apply(spec, str(raw.get("source", "")), named)
    except PolicyError as error:
        raise ClientError(400, str(error), code="invalid_policy") from None
    queen.reconciler.spec_changed(generation)
    await queen.fleet.refresh()
    return JSONResponse({"generation": generation, "changed": changed})


async def get_spec(request: Request) -> Response:
    """The applied spec and the hives the queen has seen running: what the keeper plans removals from."""
    fleet = parts.of(request).fleet
    spec = fleet.spec.model_dump(mode="json") if fleet.spec else None
    return JSONResponse({"generation": fleet.generation, "spec": spec, "seen_hives": sorted(fleet.seen_hives())})


async def status(request: Request) -> Response:
    """The fleet as the queen sees it; with `follow=1` an SSE stream of it, sent again whenever it changes (and
    every KEEP_FRESH seconds, so heartbeat ages stay current): what the web UI's fleet page draws from."""
    queen = parts.of(request)
    if request.query_params.get("follow") not in ("1", "true"):
        return JSONResponse(snapshot(queen))
    return StreamingResponse(_watch(queen), media_type="text/event-stream", headers=SSE_HEADERS)


async def _watch(queen: parts.Queen) -> AsyncIterator[bytes]:
    last, sent = "", 0.0
    while True:
        now = time.monotonic()
        current = snapshot(queen)
        changed = json.dumps({k: v for k, v in current.items() if k not in _AGES}, sort_keys=True, default=str)
        if changed != last or now - sent >= KEEP_FRESH:
            yield f"data: {json.dumps(current, default=str)}\n\n".encode()
            last, sent = changed, now
        await asyncio.sleep(WATCH_TICK)


def snapshot(queen: parts.Queen) -> dict[str, object]:
    """The queen's view of the fleet, as `rbee status` and the web UI show it."""
    fleet, reconciler = queen.fleet, queen.reconciler
    observed = fleet.registry.observed
    rates = queen.metrics.traffic.worker_rates()
    hives = fleet.spec.hives if fleet.spec else ()
    return {
        "generation": fleet.generation,
        "leadership": queen.leadership.describe(),
        "connections": {hive.name: f"{hive.describe_connection()}, {hive.api_url}" for hive in hives},
        "observed_at": fleet.registry.observed_at,
        "hives": observed.model_dump(mode="json")["hives"] if observed else [],
        "routes": [
            {
                "worker": r.worker_id,
                "hive": r.hive,
                "model": r.model,
                "url": r.url,
                "in_flight": r.in_flight,
                "slots": r.slots,
                "tokens_per_s": rates.get(f"{r.hive}/{r.worker_id}", 0.0),
            }
            for r in fleet.registry.routes.values()
        ],
        "queues": {model: queen.admission.queue_depth(model) for model in queen.admission.lanes},
        "fetches": reconciler.fetches.current(),
        "conditions": [condition.to_json() for condition in reconciler.conditions.values()] + _routing(queen),
        "heartbeats": fleet.heartbeats.ages(time.monotonic()),
        "reconcile": {
            "interval": reconciler.interval,
            "suspended": reconciler.suspended,
            "passes": reconciler.passes,
            "last": reconciler.last.to_json() if reconciler.last else None,
        },
    }


def _routing(queen: parts.Queen) -> list[dict[str, object]]:
    """The routing policy's condition, while the operator's route() is disabled for failing."""
    policy = queen.admission.policy
    if policy.disabled is None:
        return []
    return [
        {
            "hive": "queen",
            "target": f"routing {policy.name}",
            "type": "Degraded",
            "reason": "PolicyDisabled",
            "message": f"{policy.disabled}; routing least-loaded until a spec is applied again",
            "since": time.time(),
        }
    ]


async def explain(request: Request) -> Response:
    """Which worker the routing policy would pick for a sample request, and why."""
    queen = parts.of(request)
    query = request.query_params
    try:
        prompt_chars = int(query.get("prompt_chars", 0))
    except ValueError:
        raise ClientError(400, "prompt_chars must be an integer", code="invalid_query") from None
    model = query.get("model", "")
    prefix = prefix_of([query.get("prompt", "")])
    candidates, pick, reason = queen.admission.explain(Ask(model, query.get("hive"), None, prompt_chars, prefix))
    policy = queen.admission.policy.kind
    answer: dict[str, object] = {
        "model": model,
        "policy": policy,
        "candidates": candidates,
        "pick": pick,
        "reason": reason,
    }
    serving = queen.fleet.providers.serving(model)
    if serving:  # the order a request would try this fleet and its providers in, with its request's preferences
        asked = {
            f"x-rbee-{name.replace('_', '-')}": query[name]
            for name in ("prefer", "max_price", "region")
            if name in query
        }
        prefs = ranking.preferences(None, asked)
        ranked, left_out = ranking.rank(model, ranking.Shape.CHAT, prefs, ranking.local_side(queen, model), serving)
        answer["providers"] = {"order": [candidate.describe() for candidate in ranked], "left_out": left_out}
    return JSONResponse(answer)


async def policy(request: Request) -> Response:
    """The routing policy in force: its kind, and for a policy file its name and text."""
    active = parts.of(request).admission.policy
    return JSONResponse(
        {
            "kind": active.kind,
            "name": active.name if active.source else None,
            "source": active.source,
            "disabled": active.disabled,
        }
    )


async def traffic(request: Request) -> Response:
    """The last ten minutes per model, one point per 10 s (queen/traffic.py), and the queues now."""
    queen = parts.of(request)
    return JSONResponse(
        {
            "bucket": BUCKET,
            "models": queen.metrics.traffic.series(),
            "queues": {model: queen.admission.queue_depth(model) for model in queen.admission.lanes},
        }
    )


async def events(request: Request) -> Response:
    """The event log: the last `limit` events as JSON, or with `follow=1` an SSE stream that goes on with each
    new event (`after=ID` resumes after an event already seen)."""
    log = parts.of(request).events
    try:
        limit = max(1, min(int(request.query_params.get("limit", 100)), 10_000))
        after = int(request.query_params["after"]) if "after" in request.query_params else None
    except ValueError:
        raise ClientError(400, "limit and after must be integers", code="invalid_query") from None
    if request.query_params.get("follow") not in ("1", "true"):
        return JSONResponse({"events": log.recent(limit, after)})
    return StreamingResponse(log.follow(limit, after), media_type="text/event-stream", headers=SSE_HEADERS)


async def reconcile(request: Request) -> Response:
    """Suspend or resume the reconcile loop: `{"suspended": true|false}`."""
    queen = parts.of(request)
    raw = await read_object(request, queen.fleet.max_body)
    wanted = raw.get("suspended")
    if not isinstance(wanted, bool):
        raise ClientError(400, 'send {"suspended": true} or {"suspended": false}', code="invalid")
    reconciler = queen.reconciler
    if wanted != reconciler.suspended:
        reconciler.suspended = wanted
        queen.store.set_suspended(wanted)
        queen.events.record("reconcile", "fleet", "suspended" if wanted else "resumed")
        if not wanted:
            reconciler.request()
    return JSONResponse({"suspended": reconciler.suspended})


async def heartbeat(request: Request) -> Response:
    queen = parts.of(request)
    try:
        state = HiveState.model_validate_json(await request.body())
    except pydantic.ValidationError:
        raise ClientError(400, "the body must be a hive state", code="invalid_state") from None
    if state.name != request.path_params["name"]:
        raise ClientError(
            400, f"a heartbeat of hive {request.path_params['name']} must describe that hive", code="invalid_state"
        )
    try:
        queen.fleet.heartbeat(state)
    except UnknownHive:
        raise ClientError(404, f"hive {state.name} is not in the applied spec", code="unknown_hive") from None
    return JSONResponse({"ok": True})


async def shutdown(request: Request) -> Response:
    queen = parts.of(request)
    if queen.server is not None:
        queen.server.should_exit = True
    return JSONResponse({"state": "stopping"}, 202)
