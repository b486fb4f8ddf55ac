"""Which of a request's candidates to try, in order: providers filtered by the request's constraints (its API
key's `routing` defaults, overridden by X-Rbee-Max-Price, X-Rbee-Region and X-Rbee-Prefer) and ordered by price
or by measured time to first token; this fleet's own workers first while one is free (unless the request prefers
otherwise), and last, where the request may queue, when none is. Pure but for `local_side`, which reads the
fleet's state; federation.py tries the candidates."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from rbee.queen import parts
from rbee.queen.auth import Key
from rbee.queen.errors import ClientError
from rbee.queen.providers import LOCAL, Provider
from rbee.spec.providers import Prefer, Pricing, RoutePreferences


class Shape(StrEnum):
    """The API a request came in, and the path it is forwarded to (under the provider's base URL)."""

    CHAT = "chat"
    COMPLETIONS = "completions"
    EMBEDDINGS = "embeddings"
    MESSAGES = "messages"
    RESPONSES = "responses"


@dataclass(frozen=True, slots=True)
class Local:
    """This fleet's side of a decision: whether it serves the model, has a worker free now, and how fast it was."""

    serves: bool
    free: bool
    ttft: float | None
    pricing: Pricing


@dataclass(frozen=True, slots=True)
class Candidate:
    provider: Provider | None
    """None: this fleet's own workers."""
    pricing: Pricing
    ttft: float | None
    queues: bool = False
    """This fleet's own, with no worker free: the request waits in its queue."""

    @property
    def name(self) -> str:
        return self.provider.name if self.provider is not None else LOCAL

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "price_in": self.pricing.input,
            "price_out": self.pricing.output,
            "ttft_ms": round(self.ttft * 1000, 1) if self.ttft is not None else None,
            "queues": self.queues,
        }


def preferences(key: Key | None, headers: Mapping[str, str]) -> RoutePreferences:
    """The key's routing defaults with the request's X-Rbee-* headers over them; a bad header is a 400 naming it."""
    chosen = (key.routing if key is not None else None) or RoutePreferences()
    changes: dict[str, Any] = {}
    prefer = headers.get("x-rbee-prefer")
    if prefer is not None:
        try:
            changes["prefer"] = Prefer(prefer.strip().lower())
        except ValueError:
            raise ClientError(
                400, f"X-Rbee-Prefer: {prefer!r} is not local, cheapest or fastest", param="X-Rbee-Prefer"
            ) from None
    price = headers.get("x-rbee-max-price")
    if price is not None:
        try:
            changes["max_price"] = float(price)
            if not changes["max_price"] >= 0 or math.isinf(changes["max_price"]):
                raise ValueError
        except ValueError:
            raise ClientError(
                400, f"X-Rbee-Max-Price: {price!r} is not a price (per 1,000 tokens)", param="X-Rbee-Max-Price"
            ) from None
    region = headers.get("x-rbee-region")
    if region is not None:
        places = tuple(part.strip() for part in region.split(",") if part.strip())
        if (
            not places
            or len(places) > 16
            or any(len(place) > 32 or not place.replace("-", "").isalnum() for place in places)
        ):
            raise ClientError(
                400, f"X-Rbee-Region: {region!r} is not a list of regions or countries", param="X-Rbee-Region"
            )
        changes["region"] = places
    return chosen.model_copy(update=changes) if changes else chosen


def rank(
    model: str, shape: Shape, prefs: RoutePreferences, local: Local, providers: list[Provider]
) -> tuple[list[Candidate], list[str]]:
    """The candidates for a request, in the order to try them, and why each provider left out was (pure)."""
    left_out: list[str] = []
    offered: list[Candidate] = []
    for provider in providers:
        pricing = provider.pricing(model)
        if not provider.serves_shape(shape):
            left_out.append(f"{provider.name} takes no {shape} requests (an OpenAI-compatible endpoint)")
        elif not provider.healthy:
            left_out.append(f"{provider.name} is unhealthy: {provider.reason}")
        elif prefs.max_price is not None and pricing.highest > prefs.max_price:
            left_out.append(
                f"{provider.name} costs {pricing.highest:g} per 1k tokens, over the {prefs.max_price:g} asked"
            )
        elif prefs.region is not None and not {provider.spec.region, provider.spec.country} & set(prefs.region):
            where = provider.spec.region or provider.spec.country or "no stated region"
            left_out.append(f"{provider.name} is in {where}, not in {', '.join(prefs.region)}")
        else:
            offered.append(Candidate(provider, pricing, provider.ttft.get(model)))
    own = None
    if local.serves and prefs.local != "never":
        if prefs.max_price is not None and local.pricing.highest > prefs.max_price:
            left_out.append(
                f"this fleet costs {local.pricing.highest:g} per 1k tokens, over the {prefs.max_price:g} asked"
            )
        else:
            own = Candidate(None, local.pricing, local.ttft, queues=not local.free)

    def by_price(candidate: Candidate) -> tuple[float, float]:
        return candidate.pricing.highest, candidate.ttft if candidate.ttft is not None else math.inf

    def by_speed(candidate: Candidate) -> tuple[float, float]:
        return candidate.ttft if candidate.ttft is not None else math.inf, candidate.pricing.highest

    order = by_speed if prefs.prefer is Prefer.FASTEST else by_price
    if own is not None and not own.queues and prefs.prefer is not Prefer.LOCAL:
        ranked = sorted([own, *offered], key=order)  # a tie goes to this fleet: it is listed first
    else:
        ranked = sorted(offered, key=order)
        if own is not None:
            ranked.insert(0 if not own.queues else len(ranked), own)
    return ranked, left_out


def local_side(queen: parts.Queen, model: str) -> Local:
    providers = queen.fleet.providers
    return Local(
        queen.fleet.serves_locally(model),
        queen.admission.has_free(model),
        providers.local_ttft.get(model),
        providers.settings.local_price,
    )
