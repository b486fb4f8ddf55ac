"""The platform side of the queen (the original design's platform mode): its providers, listed with their health,
prices and measured latency; providers registering themselves (the operator's credential, or the registration
key hive.yaml names); and the usage record summed per customer key, provider or model, with what it is billed at
(the providers' cost plus the margin) and what each provider is owed.

A provider's key is kept (the store, 0600 under a 0700 RBEE_HOME) and used, never shown: lists say whether one
is set.
"""

from __future__ import annotations

import hmac
import os
import time
from typing import Annotated, Any

import pydantic
from pydantic import Field, StringConstraints
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from rbee.api.credentials import bearer_of, matches
from rbee.queen import parts
from rbee.queen.errors import ClientError, invalid, read_object
from rbee.queen.providers import Provider
from rbee.spec.connection import Strict
from rbee.spec.fields import Name
from rbee.spec.providers import ProviderKind, ProviderModel, ProviderSpec

BY = ("key", "provider", "model")


def view(provider: Provider) -> dict[str, Any]:
    """A provider as `rbee providers ls` and the web UI show it: never its key."""
    spec = provider.spec
    return {
        "name": provider.name,
        "endpoint": spec.endpoint,
        "kind": spec.kind,
        "origin": provider.origin,
        "key": "set" if provider.key else "none",
        "healthy": provider.healthy,
        "condition": provider.condition(),
        "in_flight": provider.in_flight,
        "max_concurrent": spec.max_concurrent,
        "models": sorted(provider.models()),
        "pricing": spec.pricing.model_dump(),
        "region": spec.region,
        "country": spec.country,
        "sla_ttft_p95": spec.sla.ttft_p95 if spec.sla else None,
        "ttft_ms": {model: round(seconds * 1000, 1) for model, seconds in sorted(provider.ttft.items())},
    }


async def providers(request: Request) -> Response:
    queen = parts.of(request)
    listed = [view(provider) for provider in queen.fleet.providers.by_name.values()]
    return JSONResponse({"providers": listed, "local_ttft_ms": _ms(queen.fleet.providers.local_ttft)})


def _ms(seconds: dict[str, float]) -> dict[str, float]:
    return {model: round(value * 1000, 1) for model, value in sorted(seconds.items())}


class Registration(Strict):
    """What a provider sends to register: hive.yaml's provider fields, with the key the platform is to use with
    it given here (there is no environment variable of the platform's to name)."""

    name: Name
    endpoint: str
    kind: ProviderKind = ProviderKind.RBEE
    key: Annotated[str, StringConstraints(min_length=8, max_length=512)] | None = None
    models: tuple[ProviderModel | Name, ...] | None = None
    pricing: dict[str, float] | None = None
    region: str | None = None
    country: str | None = None
    sla: dict[str, Any] | None = None
    max_concurrent: Annotated[int, Field(ge=1, le=100_000)] = 64

    def spec(self) -> ProviderSpec:
        """The provider as hive.yaml would hold it (its key apart); ValidationError names a bad field."""
        fields = self.model_dump(exclude={"key"}, exclude_none=True)
        return ProviderSpec.model_validate(fields)


def _registrar(request: Request, queen: parts.Queen) -> str:
    """Who may register: the operator, or a holder of the registration key hive.yaml names; 401 otherwise."""
    given = bearer_of(request.headers.get("authorization", ""))
    if matches(given, queen.credentials.operator):
        return "the operator"
    ref = queen.fleet.providers.settings.registration_key
    expected = os.environ.get(ref.env) if ref is not None else None
    if expected and given and hmac.compare_digest(given.encode(), expected.encode()):
        return "the registration key"
    raise ClientError(
        401,
        "registering a provider takes the operator's credential or the platform's registration key",
        "authentication_error",
        "unauthorized",
    )


async def register(request: Request) -> Response:
    queen = parts.of(request)
    who = _registrar(request, queen)
    raw = await read_object(request, 1 << 20)
    try:
        registration = Registration.model_validate(raw)
        spec = registration.spec()
    except pydantic.ValidationError as failure:
        raise invalid(failure) from None
    federation = queen.fleet.providers
    if federation.declared(spec.name):
        raise ClientError(409, f"provider {spec.name} is hive.yaml's; change it there", code="conflict", param="name")
    queen.store.register_provider(spec.name, spec.model_dump_json(), registration.key)
    federation.register(spec, registration.key)
    queen.events.record("registered", f"provider/{spec.name}", f"{spec.endpoint} registered by {who}")
    return JSONResponse(view(federation.by_name[spec.name]), 201)


async def unregister(request: Request) -> Response:
    queen = parts.of(request)
    name = request.path_params["name"]
    federation = queen.fleet.providers
    if federation.declared(name):
        raise ClientError(409, f"provider {name} is hive.yaml's; remove it there and apply", code="conflict")
    if not queen.store.remove_provider(name):
        raise ClientError(404, f"no provider {name} is registered", code="not_found")
    federation.unregister(name)
    queen.events.record("unregistered", f"provider/{name}", "removed by the operator")
    return JSONResponse({"removed": name})


async def usage(request: Request) -> Response:
    """`?since=SECONDS` (default a day) `&by=key|provider|model` (default key)."""
    queen = parts.of(request)
    query = request.query_params
    by = query.get("by", "key")
    if by not in BY:
        raise ClientError(400, f"by={by!r}: sum by key, provider or model", code="invalid_query", param="by")
    try:
        since = float(query.get("since", 86400))
        if not since >= 0:
            raise ValueError
    except ValueError:
        raise ClientError(400, "since is a number of seconds", code="invalid_query", param="since") from None
    queen.meter.flush()  # what is buffered counts too
    rows = queen.store.usage(time.time() - since, by)
    totals = {
        field: sum(row[field] or 0 for row in rows)
        for field in ("requests", "input_tokens", "output_tokens", "cost", "billed", "failed")
    }
    return JSONResponse(
        {"since": since, "by": by, "margin": queen.fleet.providers.settings.margin, "rows": rows, "totals": totals}
    )
