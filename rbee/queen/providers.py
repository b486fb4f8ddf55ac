"""The providers as the queen holds them: hive.yaml's and those registered at /v2/platform/providers, each with
the key it is called with (read from the queen's environment, never logged), the models it serves (declared, or
found at its /v1/models), how many requests it has in flight, its measured time to first token per model, and its
health as a condition: a provider that fails `unhealthy_after` times in a row is taken out of routing and probed
every `probe_interval` until it answers again.

No HTTP here but the probes: federation.py forwards requests and reports how each went.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import ssl
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from rbee.clients.provider import ProviderCallError, ProviderClient
from rbee.spec.backends import ModelKind
from rbee.spec.providers import Federation, Pricing, ProviderKind, ProviderSpec

log = logging.getLogger("rbee.queen")
PROBE_TIMEOUT = 5.0
WEIGHT = 0.2
"""How much the latest request moves a provider's time to first token: an exponentially weighted mean."""
LOCAL = "local"
"""The name the queen's own fleet goes by among the candidates."""


@dataclass
class Provider:
    spec: ProviderSpec
    key: str | None
    """The API key this queen sends it (its value: never logged, never shown)."""
    origin: str = "hive.yaml"
    """`hive.yaml`, or `registered` (POST /v2/platform/providers)."""
    trust: ssl.SSLContext | None = None
    in_flight: int = 0
    failures: int = 0
    healthy: bool = True
    reason: str = "not asked yet"
    since: float = field(default_factory=time.time)
    found: tuple[str, ...] = ()
    """The model ids its /v1/models listed at the last probe."""
    ttft: dict[str, float] = field(default_factory=dict)
    """Per model, seconds to first token, exponentially weighted."""

    @property
    def name(self) -> str:
        return self.spec.name

    def remote(self, model: str) -> str | None:
        """Its own name for `model`, when it serves it."""
        declared = self.spec.model(model)
        if declared is not None:
            return declared.remote or declared.name
        if self.spec.models is None and model in self.found:
            return model
        return None

    def models(self) -> dict[str, ModelKind]:
        """The models it serves here, by the names clients use, and their kinds."""
        if self.spec.models is not None:
            return {model.name: model.kind for model in self.spec.models}
        return dict.fromkeys(self.found, ModelKind.TEXT)

    def serves_shape(self, shape: str) -> bool:
        """Whether it takes a request of this API shape: an rbee queen takes all of rbee's, an OpenAI-compatible
        endpoint chat, completions and embeddings."""
        return self.spec.kind is ProviderKind.RBEE or shape in ("chat", "completions", "embeddings")

    @property
    def full(self) -> bool:
        return self.in_flight >= self.spec.max_concurrent

    def pricing(self, model: str) -> Pricing:
        return self.spec.pricing_of(model)

    def answered(self, model: str, seconds: float) -> None:
        before = self.ttft.get(model)
        self.ttft[model] = seconds if before is None else before + WEIGHT * (seconds - before)
        self.failures = 0
        if not self.healthy or self.reason != "answering":
            self._set(True, "answering")

    def failed(self, why: str, limit: int, at_once: bool = False) -> None:
        """A request (or probe) that failed: after `limit` in a row (or `at_once`, our key refused), unhealthy."""
        self.failures += 1
        if self.healthy and (at_once or self.failures >= limit):
            self._set(False, why)
            log.warning("provider %s is unhealthy: %s; probing it until it answers", self.name, why)
        elif not self.healthy:
            self.reason = why

    def _set(self, healthy: bool, reason: str) -> None:
        self.healthy, self.reason, self.since = healthy, reason, time.time()

    def condition(self) -> dict[str, object]:
        """Its condition, in the shape `rbee status` shows for hives and workers."""
        return {
            "type": "Ready" if self.healthy else "Unhealthy",
            "status": self.healthy,
            "reason": self.reason,
            "since": self.since,
        }


def _trust(spec: ProviderSpec) -> ssl.SSLContext | None:
    if spec.ca_file is None:
        return None
    try:
        return ssl.create_default_context(cafile=os.path.expanduser(spec.ca_file))
    except (OSError, ssl.SSLError) as error:
        log.error(
            "provider %s: its ca_file %s cannot be read (%s); using the system's roots", spec.name, spec.ca_file, error
        )
        return None


class Providers:
    def __init__(self, client: ProviderClient | None = None) -> None:
        self.client = client or ProviderClient()
        self.by_name: dict[str, Provider] = {}
        self.settings = Federation()
        self.local_ttft: dict[str, float] = {}
        """This fleet's own time to first token per model, weighted like a provider's."""
        self._declared: tuple[ProviderSpec, ...] = ()
        self._registered: dict[str, tuple[ProviderSpec, str | None]] = {}
        self._changed = asyncio.Event()
        """Set when providers come or change: the watcher asks the new ones at once."""

    def configure(
        self,
        declared: Iterable[ProviderSpec],
        settings: Federation,
        environ: Mapping[str, str] = os.environ,
    ) -> None:
        """hive.yaml's providers (their keys from `environ`), keeping what is known of those that did not change."""
        self.settings = settings
        self._declared = tuple(declared)
        keys = {}
        for spec in self._declared:
            value = environ.get(spec.api_key.env) if spec.api_key is not None else None
            if spec.api_key is not None and not value:
                log.warning(
                    "provider %s: its key variable %s is not set in the queen's environment",
                    spec.name,
                    spec.api_key.env,
                )
            keys[spec.name] = value
        self._rebuild(keys)

    def register(self, spec: ProviderSpec, key: str | None) -> None:
        """A provider that registered itself (persisted by the caller)."""
        self._registered[spec.name] = (spec, key)
        self._rebuild()

    def unregister(self, name: str) -> bool:
        gone = self._registered.pop(name, None) is not None
        self._rebuild()
        return gone

    def declared(self, name: str) -> bool:
        return any(spec.name == name for spec in self._declared)

    def _rebuild(self, keys: Mapping[str, str | None] | None = None) -> None:
        wanted: dict[str, tuple[ProviderSpec, str | None, str]] = {}
        for spec, key in self._registered.values():
            wanted[spec.name] = (spec, key, "registered")
        for spec in self._declared:  # hive.yaml's own win over a registration of the same name
            known = self.by_name.get(spec.name)
            key = keys.get(spec.name) if keys is not None else (known.key if known else None)
            wanted[spec.name] = (spec, key, "hive.yaml")
        fresh: dict[str, Provider] = {}
        for name, (spec, key, origin) in wanted.items():
            known = self.by_name.get(name)
            if known is not None and known.spec == spec and known.key == key:
                known.origin = origin
                fresh[name] = known
            else:
                fresh[name] = Provider(spec, key, origin, _trust(spec))
                self._changed.set()
        self.by_name = fresh

    def serving(self, model: str) -> list[Provider]:
        """The providers that serve `model`, healthy or not."""
        return [provider for provider in self.by_name.values() if provider.remote(model) is not None]

    def models(self) -> dict[str, ModelKind]:
        found: dict[str, ModelKind] = {}
        for provider in self.by_name.values():
            for name, kind in provider.models().items():
                found.setdefault(name, kind)
        return found

    def answered_locally(self, model: str, seconds: float) -> None:
        before = self.local_ttft.get(model)
        self.local_ttft[model] = seconds if before is None else before + WEIGHT * (seconds - before)

    async def probe(self, provider: Provider) -> None:
        """Ask its /v1/models: the models it lists now, and whether it answers at all."""
        try:
            provider.found = tuple(
                await self.client.models(provider.spec.endpoint, provider.key, PROBE_TIMEOUT, provider.trust)
            )
        except ProviderCallError as error:
            provider.failed(str(error), self.settings.unhealthy_after, at_once=error.code == "unauthorized")
            return
        provider.failures = 0
        if not provider.healthy or provider.reason == "not asked yet":
            provider._set(True, f"answering ({len(provider.found)} models listed)")
            log.info("provider %s answers again", provider.name)

    async def watch(self) -> None:
        """Probe every provider once now, then the unhealthy (and those whose models are found, not declared)
        every probe_interval, and new ones as soon as they come."""
        first = True
        while True:
            self._changed.clear()
            due = [
                provider
                for provider in list(self.by_name.values())
                if first or not provider.healthy or provider.spec.models is None or provider.reason == "not asked yet"
            ]
            first = False
            if due:
                await asyncio.gather(*(self.probe(provider) for provider in due), return_exceptions=True)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), self.settings.probe_interval)

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self.client.close()
