"""The web UI's plan page: POST /v2/plan (the operator's credential) with a hive.yaml's text answers the plan
`rbee plan` would print for it — the same loader and its line-numbered sentences, a fresh observation of every
hive it names (and of those it drops, planned for removal), download sizes, the same planner and renderer.

Applying it is PUT /v2/spec with the `spec` this returns: the queen's reconcile loop then makes it so, as it does
for `rbee apply`. Only what is in hive.yaml itself can be applied from a page: a routing policy file sits beside
hive.yaml on the operator's machine, and the queen takes no code over the network.
"""

from __future__ import annotations

import time

import yaml
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from rbee.api import wire
from rbee.observe import downloads
from rbee.plan import planner, render
from rbee.queen import parts
from rbee.queen.errors import ClientError, read_object
from rbee.spec import load

MAX_FILENAME = 200


async def current(request: Request) -> Response:
    """The spec the queen holds, as YAML for the page to start from (the operator's own file has its comments)."""
    spec = parts.of(request).fleet.spec
    dumped = yaml.safe_dump(spec.model_dump(mode="json", exclude_defaults=True), sort_keys=False) if spec else ""
    return JSONResponse({"yaml": dumped})


async def plan(request: Request) -> Response:
    queen = parts.of(request)
    raw = await read_object(request, queen.fleet.max_body)
    text, filename = raw.get("yaml"), raw.get("filename") or "hive.yaml"
    if not isinstance(text, str) or not isinstance(filename, str):
        raise ClientError(400, 'send {"yaml": the text of a hive.yaml, "filename": its name}', code="invalid_body")
    filename = filename.rsplit("/", 1)[-1][:MAX_FILENAME] or "hive.yaml"
    try:
        spec = load.loads(text, filename)
    except load.SpecError as error:
        body = wire.error_body(error.problems[0], "invalid_spec")
        body["error"]["problems"] = error.problems
        return JSONResponse(body, 400)
    current = queen.fleet.spec
    retired = tuple(hive for hive in (current.hives if current else ()) if spec.hive(hive.name) is None)
    everything = spec.model_copy(update={"hives": spec.hives + retired})
    started = time.monotonic()
    observed = await downloads.sizes_async(spec, await queen.reconciler.look(everything))
    the_plan = planner.make_plan(spec, observed)
    summary = the_plan.summary
    return JSONResponse(
        {
            "lines": [
                {"text": line.text, "symbol": line.symbol.value if line.symbol else None}
                for line in render.lines(the_plan, spec)
            ],
            "summary": {
                "add": summary.add,
                "change": summary.change,
                "destroy": summary.destroy,
                "blocked": summary.blocked,
                "has_changes": summary.has_changes,
            },
            "observed_in": round(time.monotonic() - started, 3),
            "spec": spec.model_dump(mode="json"),
            "not_applicable": (
                f"queen.routing names {spec.queen.routing}, a file beside hive.yaml: apply this one with rbee apply"
                if spec.queen.routing.endswith(".py")
                else None
            ),
        }
    )
