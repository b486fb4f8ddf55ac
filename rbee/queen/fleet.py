"""The fleet as the queen holds it: the applied spec (the one owner of desired state in the queen, with its
generation and routing policy), and what is observed of it, merged from polls and heartbeats into the registry
of routable workers. No HTTP here: the API modules call in.

Hives that send heartbeats are taken from their last beat; the others are polled every second, and those that
answer are asked to send heartbeats.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import aiohttp

from rbee.api.credentials import FleetCredentials
from rbee.api.state import HiveObservation, HiveState, HiveStatus, ObservedState
from rbee.observe import hives as observe_hives
from rbee.queen.admission import Admission
from rbee.queen.auth import ApiKeys
from rbee.queen.events import EventLog
from rbee.queen.heartbeats import MISSED, Heartbeats
from rbee.queen.providers import Providers
from rbee.queen.registry import Registry
from rbee.queen.scheduling import Policy, PolicyKind, Route, make_policy
from rbee.queen.store import Store
from rbee.spec.backends import ModelKind
from rbee.spec.policy import PolicyError, PolicyRef, digest
from rbee.spec.providers import ProviderSpec
from rbee.spec.schema import HiveFile

SEEN_EVERY = 60.0
"""Seconds between two SQLite writes of "hive X answered": the registry refreshes every second."""
POLL_TIMEOUT = 2.0
DEFAULT_QUEUE_WAIT = 30.0
DEFAULT_STREAM_IDLE = 60.0


class UnknownHive(KeyError):
    """A heartbeat from a hive the applied spec does not name."""


class Fleet:
    def __init__(
        self,
        store: Store,
        events: EventLog,
        admission: Admission,
        keys: ApiKeys,
        heartbeats: Heartbeats,
        credentials: FleetCredentials | None,
        queue_wait: float | None = None,
        policy_dir: Path | None = None,
        providers: Providers | None = None,
    ) -> None:
        self.store = store
        self.events = events
        self.admission = admission
        self.keys = keys
        self.heartbeats = heartbeats
        self.credentials = credentials
        self.queue_wait_override = queue_wait
        self.policy_dir = policy_dir
        """Where the keeper puts routing policies, named by digest (the queen's own state directory)."""
        self.registry = Registry(credentials)
        self.providers = providers or Providers()
        """Other queens and endpoints that serve models for this one (federation.py)."""
        for registered, key in store.registered_providers():
            self.providers.register(ProviderSpec.model_validate_json(registered), key)
        self.beating: set[str] = set()
        self.silenced: set[str] = set()
        """Hives whose beats stopped, or that stopped answering polls, since the last `take_silenced`: their
        streams end and the reconcile loop should look at them."""
        self._observer: aiohttp.ClientSession | None = None
        self._recorded: dict[str, float] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        current = store.current_spec()
        self.generation: int = current[0] if current else 0
        self.spec: HiveFile | None = current[1] if current else None
        self.policy: PolicyRef | None = store.policy()
        if self.spec is not None:
            try:
                self._configure(self.spec, self._policy(self.spec, self.policy))
            except PolicyError as error:  # the file went, or this rbee cannot load it: route, least-loaded
                self._configure(self.spec, Policy(PolicyKind.LEAST_LOADED))
                events.record("failed", "queen/routing", f"{error}; routing least-loaded until a spec is applied")
            self.registry.restore(store.workers())
            admission.sync(self.registry.routes.values())

    # -- desired state ---------------------------------------------------------------------------------------

    @property
    def queue_wait(self) -> float:
        if self.queue_wait_override is not None:
            return self.queue_wait_override
        return self.spec.queen.queue_timeout if self.spec else DEFAULT_QUEUE_WAIT

    @property
    def max_body(self) -> int:
        return self.spec.queen.max_body_bytes if self.spec else 4 << 20

    def apply(self, spec: HiveFile, source: str, policy: PolicyRef | None = None) -> tuple[int, bool]:
        """Make `spec` the desired state: (generation, whether it changed). A routing policy that cannot be used
        is refused (PolicyError) before anything is stored."""
        routing = self._policy(spec, policy)
        generation, changed = self.store.apply_spec(spec, source, policy)
        self.generation, self.spec, self.policy = generation, spec, policy
        self._configure(spec, routing)
        self.events.changed()
        return generation, changed

    def reload(self) -> bool:
        """Take the spec another queen on the same store applied (a newer generation); True when it changed."""
        current = self.store.current_spec()
        if current is None or current[0] <= self.generation:
            return False
        generation, spec = current
        policy = self.store.policy()
        try:
            routing = self._policy(spec, policy)
        except PolicyError as error:  # its file is on the other queen's disk: route least-loaded here
            routing = Policy(PolicyKind.LEAST_LOADED)
            self.events.record("failed", "queen/routing", f"{error}; routing least-loaded until it is here")
        self.generation, self.spec, self.policy = generation, spec, policy
        self._configure(spec, routing)
        self.events.changed()
        return True

    def _policy(self, spec: HiveFile, policy: PolicyRef | None) -> Policy:
        """The routing policy `spec` names, built once; a policy file only from the queen's own disk, and only
        if its text has the digest the keeper named."""
        source = None
        if spec.queen.routing.endswith(".py"):
            if policy is None or self.policy_dir is None:
                raise PolicyError(f"the routing policy {spec.queen.routing} was not named with the spec")
            path = self.policy_dir / policy.file_name
            try:
                source = path.read_text()
            except OSError:
                raise PolicyError(
                    f"the routing policy {policy.name} is not in {self.policy_dir}; rbee apply puts it there"
                ) from None
            if digest(source) != policy.sha256:
                raise PolicyError(f"{path} does not have the digest the keeper named; run rbee apply again")
        return make_policy(spec.queen.routing, source)

    def _configure(self, spec: HiveFile, routing: Policy) -> None:
        self.keys.configure(spec)
        self.providers.configure(spec.providers, spec.queen.federation)
        self.admission.max_queue = spec.queen.max_queue
        self.admission.policy = routing

    def served_models(self) -> list[str]:
        """The models hive.yaml runs workers of, in its order, then those only providers serve."""
        own = [] if self.spec is None else self._own_models()
        return own + [name for name in self.providers.models() if name not in own]

    def _own_models(self) -> list[str]:
        assert self.spec is not None
        served = {worker.model for worker in self.spec.workers if worker.replicas > 0}
        return [model.name for model in self.spec.models if model.name in served]

    def serves_locally(self, model: str) -> bool:
        """Whether hive.yaml runs (or may start) workers of `model`."""
        return self.spec is not None and any(
            worker.model == model and worker.replicas > 0 for worker in self.spec.workers
        )

    def stream_idle(self, model: str) -> float:
        """Seconds a stream of `model` may go without a byte from its worker before it is ended."""
        found = self.spec.model(model) if self.spec else None
        if found is not None and found.stream_idle_timeout is not None:
            return found.stream_idle_timeout
        return self.spec.queen.stream_idle_timeout if self.spec else DEFAULT_STREAM_IDLE

    def time_limit(self, model: str) -> float | None:
        """Seconds one request of `model` may generate for (its request_timeout); None for no limit."""
        found = self.spec.model(model) if self.spec else None
        limit = found.request_timeout if found is not None else 600.0
        return limit or None

    def sees(self, model: str) -> bool:
        """Whether a model takes images: hive.yaml gives it a multimodal projector (`mmproj`)."""
        found = self.spec.model(model) if self.spec else None
        return found is not None and found.mmproj is not None

    def model_kind(self, model: str) -> ModelKind | None:
        """The kind of a model hive.yaml names or a provider serves; None for a model neither does."""
        found = self.spec.model(model) if self.spec else None
        if found is not None:
            return found.kind
        return self.providers.models().get(model)

    # -- observed state --------------------------------------------------------------------------------------

    async def refresh(self) -> None:
        """Bring the registry up to date: hives that beat from their last heartbeat, the others by a poll."""
        spec = self.spec
        if spec is None:
            return
        if self._observer is None:
            self._observer = observe_hives.make_client()
        now, interval = time.monotonic(), spec.queen.heartbeat_interval
        beating = {hive.name for hive in spec.hives if self.heartbeats.fresh(hive.name, interval, now)}
        for name in self.beating - beating:
            silence = self.heartbeats.silent_for(name, now) or 0.0
            what = f"missed {MISSED} heartbeats" if silence >= MISSED * interval else "stopped answering"
            self.events.record("heartbeat", name, f"{what} (last {silence:.0f} s ago); polling it, and reconciling")
            self.silenced.add(name)
        silent = spec.model_copy(update={"hives": tuple(h for h in spec.hives if h.name not in beating)})
        polled = await observe_hives.observe_async(
            silent, timeout=POLL_TIMEOUT, credentials=self.credentials, client=self._observer
        )
        found = {hive.name: hive for hive in polled.hives}
        for name in beating:
            found[name] = HiveObservation(
                name=name, status=HiveStatus.RUNNING, installed=True, state=self.heartbeats.beats[name].state
            )
        before = self.registry.observed
        for observation in polled.hives:
            earlier = before.hive(observation.name) if before is not None else None
            if observation.status is not HiveStatus.RUNNING and earlier and earlier.status is HiveStatus.RUNNING:
                self.silenced.add(observation.name)  # it answered before and no longer does: end its streams
            quiet = self.heartbeats.silent_for(observation.name, now)
            if quiet is not None and observation.status is not HiveStatus.RUNNING:
                reason = f"no heartbeat for {quiet:.0f} s; {observation.reason}"
                found[observation.name] = observation.model_copy(update={"reason": reason})
            hive = spec.hive(observation.name)
            if observation.status is HiveStatus.RUNNING and hive and self.heartbeats.due(hive.name, interval, now):
                credential = self.credentials.hive(hive.name) if self.credentials else None
                self._background(self.heartbeats.subscribe(self._observer, hive, interval, credential))
        self.beating = beating
        observed = ObservedState(hives=tuple(found[hive.name] for hive in spec.hives))
        self.saw(observed)
        self._update(spec, observed)

    def heartbeat(self, state: HiveState) -> None:
        """A hive's beat: its state goes into the registry at once (a new worker is routable now)."""
        spec = self.spec
        if spec is None or spec.hive(state.name) is None:
            raise UnknownHive(state.name)
        self.heartbeats.record(state)
        self.beating.add(state.name)
        beat = HiveObservation(name=state.name, status=HiveStatus.RUNNING, installed=True, state=state)
        earlier = self.registry.observed.hives if self.registry.observed else ()
        merged = {hive.name: hive for hive in earlier} | {state.name: beat}
        self.saw(ObservedState(hives=(beat,)))
        self._update(spec, ObservedState(hives=tuple(merged[h.name] for h in spec.hives if h.name in merged)))

    def saw(self, observed: ObservedState) -> None:
        """Remember (in SQLite, at most once a minute per hive) which hives answered; distrust the last beat of
        those that did not."""
        now = time.monotonic()
        for hive in observed.hives:
            if hive.state is not None:
                if now - self._recorded.get(hive.name, -SEEN_EVERY) >= SEEN_EVERY:
                    self.store.saw_hive(hive.name)
                    self._recorded[hive.name] = now
            else:
                self.heartbeats.distrust(hive.name)  # its last beat is no longer the truth: poll it

    def seen_hives(self) -> set[str]:
        return self.store.seen_hives()

    def lost(self, route: Route) -> None:
        """A worker broke mid-request: stop offering it, and poll its hive rather than trust its last beat."""
        self.registry.forget(route)
        self.admission.sync(self.registry.routes.values())
        self.heartbeats.distrust(route.hive)

    def take_silenced(self) -> set[str]:
        silenced, self.silenced = self.silenced, set()
        return silenced

    def _update(self, spec: HiveFile, observed: ObservedState) -> None:
        before = self.registry.snapshot()
        self.registry.update(spec, observed)
        self.admission.sync(self.registry.routes.values())
        after = self.registry.snapshot()
        if after != before:
            self.store.replace_workers(after)
            self.events.record("registry", "workers", f"{len(after)} workers routable")

    def _background(self, work: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def close(self) -> None:
        await self.providers.close()
        for task in list(self._tasks):
            task.cancel()
        if self._observer is not None:
            await self._observer.close()
