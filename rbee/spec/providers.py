"""Providers in hive.yaml: other rbee queens, or any OpenAI-compatible endpoint, that serve models for this queen
when its own workers cannot (the original design's platform mode): where they are, the key this queen uses with
them (from an environment variable, never inline), what they serve, what they cost, where they are, and the
time to first token they promise. And how a request picks among its own fleet and them: the routing preferences
an API key has by default, which a request's X-Rbee-* headers override. No I/O here.
"""

from __future__ import annotations

import re
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field, StringConstraints, field_validator

from rbee.spec.backends import ModelKind
from rbee.spec.connection import Strict
from rbee.spec.fields import ENV_NAME, Name, Seconds, refuse_inline_key

REGION = r"^[a-z0-9][a-z0-9-]{0,31}$"
COUNTRY = r"^[A-Z]{2}$"
_ENDPOINT = re.compile(r"^https?://[A-Za-z0-9.\[\]:-]+(/[A-Za-z0-9._~/-]*)?$")


class Prefer(StrEnum):
    """Which candidate a request tries first."""

    LOCAL = "local"
    """This fleet's own workers while one is free; then providers, cheapest first."""
    CHEAPEST = "cheapest"
    """The lowest price first (this fleet's own workers cost `queen.local_price`)."""
    FASTEST = "fastest"
    """The lowest measured time to first token first (an average of the last requests, per model)."""


class ProviderKind(StrEnum):
    RBEE = "rbee"
    """Another rbee queen: every API shape rbee serves is forwarded as it came, and its answers say how many
    tokens they took."""
    OPENAI = "openai"
    """An OpenAI-compatible endpoint: chat completions, completions and embeddings are forwarded."""


class KeyRef(Strict):
    env: Annotated[str, StringConstraints(pattern=ENV_NAME)] = Field(
        description="The environment variable (of the queen's process) that holds the key."
    )


class Pricing(Strict):
    input: Annotated[float, Field(ge=0, le=1_000_000)] = Field(
        default=0.0, description="Price per 1,000 input (prompt) tokens."
    )
    output: Annotated[float, Field(ge=0, le=1_000_000)] = Field(
        default=0.0, description="Price per 1,000 output (generated) tokens."
    )

    @property
    def highest(self) -> float:
        """What X-Rbee-Max-Price is held against: the higher of the two prices."""
        return max(self.input, self.output)

    def cost(self, input_tokens: int, output_tokens: int) -> float:
        return (self.input * input_tokens + self.output * output_tokens) / 1000


class ProviderModel(Strict):
    name: Name = Field(description="The name clients of this queen use.")
    remote: Annotated[str, StringConstraints(min_length=1, max_length=256)] | None = Field(
        default=None, description="The provider's own name for it; omitted: the same name."
    )
    kind: ModelKind = ModelKind.TEXT
    pricing: Pricing | None = Field(default=None, description="Overrides the provider's pricing for this model.")


def _model_entry(value: Any) -> Any:
    return {"name": value} if isinstance(value, str) else value


class Sla(Strict):
    ttft_p95: Seconds = Field(description="The time to first token the provider promises for 95% of requests.")


class ProviderSpec(Strict):
    name: Name
    endpoint: str = Field(description="The provider's OpenAI API base URL, e.g. https://lab.example.org:8080/v1.")
    kind: ProviderKind = ProviderKind.OPENAI
    api_key: Annotated[KeyRef, BeforeValidator(refuse_inline_key)] | None = Field(
        default=None, description="The key this queen sends it: {env: VARIABLE} in the queen's environment."
    )
    models: tuple[Annotated[ProviderModel, BeforeValidator(_model_entry)], ...] | None = Field(
        default=None, description="The models it serves for this queen; omitted: those its /v1/models lists."
    )
    pricing: Pricing = Pricing()
    region: Annotated[str, StringConstraints(pattern=REGION)] | None = None
    country: Annotated[str, StringConstraints(pattern=COUNTRY)] | None = Field(
        default=None, description="ISO 3166 country code, e.g. DE."
    )
    sla: Sla | None = None
    max_concurrent: Annotated[int, Field(ge=1, le=100_000)] = Field(
        default=64, description="Requests this queen has in flight with it at once; past it, the next candidate."
    )
    ca_file: str | None = Field(
        default=None,
        description="A CA certificate (PEM) to trust for its https endpoint, on the queen's machine (another rbee "
        "fleet's CA: its RBEE_HOME/tls/ca.pem); omitted: the system's roots.",
    )

    @field_validator("endpoint")
    @classmethod
    def _valid_endpoint(cls, value: str) -> str:
        if not _ENDPOINT.match(value):
            raise ValueError(f"'{value}' is not an http(s) URL without credentials, query or fragment")
        return value.rstrip("/")

    def model(self, name: str) -> ProviderModel | None:
        return next((model for model in self.models or () if model.name == name), None)

    def pricing_of(self, name: str) -> Pricing:
        declared = self.model(name)
        return declared.pricing if declared is not None and declared.pricing is not None else self.pricing


class RoutePreferences(Strict):
    """How a request chooses among this fleet and its providers; a request's headers override each field."""

    prefer: Prefer = Prefer.LOCAL
    max_price: Annotated[float, Field(ge=0)] | None = Field(
        default=None, description="The most a request may cost per 1,000 tokens (X-Rbee-Max-Price)."
    )
    region: tuple[Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9-]{1,32}$")], ...] | None = Field(
        default=None, description="Regions or countries a request may go to (X-Rbee-Region, comma-separated)."
    )
    local: Literal["allowed", "never"] = Field(
        default="allowed", description="never: this key's requests always go to providers (a platform's tenants)."
    )


class Federation(Strict):
    """The queen's side of the providers: what its own workers cost, its margin, and how long a request may spend
    trying providers that fail before their first byte."""

    local_price: Pricing = Field(default=Pricing(), description="What this fleet's own workers charge.")
    margin: Annotated[float, Field(ge=0, le=10)] = Field(
        default=0.0, description="Added to what providers cost when billing keys: 0.35 bills 135% (the design: 30-40%)."
    )
    retry_budget: Seconds = Field(
        default=10.0, description="How long a request may try providers that fail before their first byte."
    )
    probe_interval: Seconds = Field(default=10.0, description="How often an unhealthy provider is probed.")
    unhealthy_after: Annotated[int, Field(ge=1, le=100)] = Field(
        default=3, description="Failures in a row that mark a provider unhealthy (until a probe answers)."
    )
    registration_key: KeyRef | None = Field(
        default=None,
        description="An environment variable whose key lets providers register themselves at "
        "POST /v2/platform/providers (the operator's credential always may).",
    )
