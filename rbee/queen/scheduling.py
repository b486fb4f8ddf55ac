"""Which free worker gets a request: prefix (default), least-loaded, round-robin, or the operator's own `route()`.

`prefix` sends requests that begin alike to the same replica, where the KV cache of that beginning (a shared
system prompt, the earlier turns of a chat) is likely still held: rendezvous hashing of the first PREFIX_CHARS
characters on a ring of the model's replicas (adding or removing one moves only the prefixes it held), with
bounded loads (a replica takes a prefix's requests up to half its slots, and past that only while its load stays
within LOAD_BOUND x the model's mean; otherwise the next replica in the prefix's order does, up to WALK of them),
and least-loaded for requests without text and models with one replica. The ring is built once per set of
replicas, so a decision costs one hash and a bisection however many replicas there are.

A policy sees plain data: the request (model, pinned hive, API key name, prompt size) and the candidates
(free workers of that model). A user policy that raises or returns something that is not a candidate falls
back to least-loaded, with a warning in the log.
"""

from __future__ import annotations

import bisect
import contextlib
import hashlib
import heapq
import itertools
import logging
import math
import operator
import signal
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from rbee.spec.policy import PolicyError, UserPolicy, load_user_policy

log = logging.getLogger("rbee.queen")
USER_BUDGET = 0.01
"""Seconds the user's route() may take per decision; past it the request goes least-loaded."""
DISABLE_AFTER = 20
PREFIX_CHARS = 512
"""How much of the beginning of what the model reads decides a request's replica (about 128 tokens)."""
LOAD_BOUND = 1.25
"""Past half its slots, a replica takes a prefix's request while its load is at most this times the model's
mean (consistent hashing with bounded loads)."""


POINTS = 64
"""Places each replica has on the ring: with fewer, a few replicas split the prefixes unevenly."""
WALK = 8
"""Replicas of a prefix's order tried before the request goes least-loaded (all of them past their bound)."""


class PolicyKind(StrEnum):
    PREFIX = "prefix"
    LEAST_LOADED = "least-loaded"
    ROUND_ROBIN = "round-robin"
    FILE = "file"


@dataclass(eq=False)
class Route:
    """A worker the queen can send requests to. Identity matters: one object per worker, kept across refreshes."""

    worker_id: str
    hive: str
    model: str
    url: str
    slots: int = 1
    in_flight: int = 0
    last_used: float = 0.0
    gone: bool = False
    version: int = 0
    credential: str | None = None
    """What opens this worker (its own credential, derived from its hive's): sent with every request to it."""

    @property
    def key(self) -> str:
        return f"{self.hive}/{self.worker_id}"

    @property
    def free(self) -> bool:
        return not self.gone and self.in_flight < self.slots

    def candidate(self) -> dict[str, Any]:
        return {
            "worker": self.worker_id,
            "hive": self.hive,
            "model": self.model,
            "in_flight": self.in_flight,
            "slots": self.slots,
            "url": self.url,
        }


@dataclass(frozen=True, slots=True)
class Ask:
    """What a policy knows about a request."""

    model: str
    hive: str | None = None
    key: str | None = None
    prompt_chars: int = 0
    prefix: str = ""
    """The first PREFIX_CHARS characters of what the model reads (the messages' text in order, or the prompt)."""

    def as_dict(self) -> dict[str, Any]:
        return {"model": self.model, "hive": self.hive, "key": self.key, "prompt_chars": self.prompt_chars}


def prefix_of(texts: Iterable[str]) -> str:
    """The beginning that `prefix` routing hashes: the texts in order, up to PREFIX_CHARS characters."""
    taken: list[str] = []
    room = PREFIX_CHARS
    for text in texts:
        if room <= 0:
            break
        taken.append(text[:room])
        room -= len(taken[-1])
    return "\x1e".join(taken)


@dataclass
class FreeHeap:
    """The free workers of one model, least loaded first, with lazy invalidation: O(log n) per decision."""

    heap: list[tuple[float, float, str, int, int, Route]] = field(default_factory=list)
    pushes: Iterator[int] = field(default_factory=itertools.count)
    """A tie-breaker before the route: a worker replaced under the same key (a new Route, versions from 0) must
    never make the heap compare two Route objects."""
    bound: int = 64
    """Entries past which the heap is swept of stale ones."""

    def push(self, route: Route) -> None:
        if route.free:
            route.version += 1
            entry = (route.in_flight / route.slots, route.last_used, route.key, route.version, next(self.pushes), route)
            heapq.heappush(self.heap, entry)
            if len(self.heap) > self.bound:
                self._sweep()

    def _sweep(self) -> None:
        """Drop the entries a later push made stale. Every admission and release pushes, and only least-loaded
        decisions pop: under prefix routing the heap grew by two entries a request, for as long as the queen ran."""
        self.heap = [entry for entry in self.heap if entry[3] == entry[5].version and entry[5].free]
        heapq.heapify(self.heap)
        self.bound = 2 * len(self.heap) + 64  # swept again after as many pushes as entries kept: O(1) a push

    def pop(self, accept: Callable[[Route], bool] | None = None) -> Route | None:
        skipped = []
        found = None
        while self.heap:
            entry = heapq.heappop(self.heap)
            route = entry[5]
            if entry[3] != route.version or not route.free:
                continue
            if accept is None or accept(route):
                found = route
                break
            skipped.append(entry)
        for entry in skipped:
            heapq.heappush(self.heap, entry)
        return found


_IN_FLIGHT, _SLOTS = operator.attrgetter("in_flight"), operator.attrgetter("slots")


def _point(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest())


class Ring:
    """Replicas at POINTS places each on a 64-bit hash ring. A prefix's order is the replicas met walking
    clockwise from the prefix's hash."""

    def __init__(self, routes: list[Route]) -> None:
        self.source = routes
        """The list it was built from: admission makes a new one whenever the replicas change."""
        self.routes = list(routes)
        self.identity = tuple(map(id, routes))
        self.slots = sum(map(_SLOTS, routes))
        """Route objects keep their slots for life."""
        placed = sorted((_point(f"{route.key}#{i}"), n) for n, route in enumerate(routes) for i in range(POINTS))
        self.points = [point for point, _ in placed]
        self.owners = [owner for _, owner in placed]

    def order(self, at: int) -> Iterator[Route]:
        count, seen = len(self.points), set()
        start = bisect.bisect_left(self.points, at)
        for step in range(count):
            owner = self.owners[(start + step) % count]
            if owner not in seen:
                seen.add(owner)
                yield self.routes[owner]
                if len(seen) == len(self.routes):
                    return


class Policy:
    def __init__(
        self, kind: PolicyKind = PolicyKind.PREFIX, source: str | None = None, name: str = "policy.py"
    ) -> None:
        self.kind = kind
        self.name = name
        self.source = source if kind is PolicyKind.FILE else None
        """A policy file's text, as the operator wrote it (the web UI shows it; it is never run from here)."""
        self._user: UserPolicy | None = None
        self._turn: dict[str, int] = {}
        self._rings: dict[tuple[str, str | None], Ring] = {}
        self.failures = 0
        """Calls of the user's route() that raised, ran past the budget or returned no candidate, in a row."""
        self.failed_total = 0
        self.disabled: str | None = None
        """Why the user's policy is no longer asked (it failed DISABLE_AFTER times in a row)."""
        if kind is PolicyKind.FILE:
            self._user = load_user_policy(source or "", name)

    def choose(self, ask: Ask, free: FreeHeap, routes: list[Route], *, commit: bool = True) -> tuple[Route | None, str]:
        """A free worker for `ask` and why; None when every worker is full. Without `commit` (an explanation,
        not a decision) round-robin does not advance its turn."""
        if self.kind is PolicyKind.ROUND_ROBIN:
            return self._round_robin(ask, routes, commit)
        if self.kind is PolicyKind.PREFIX and ask.prefix and len(routes) > 1:
            return self._by_prefix(ask, free, routes)
        if self.kind is PolicyKind.FILE:
            candidates = [route for route in routes if route.free]
            if not candidates:
                return None, "every worker is full"
            picked, why = self._ask_user(ask, candidates)
            if picked is not None:
                return picked, why
            route, reason = self._least_loaded(ask, free)
            return route, f"{why}; {reason}"
        return self._least_loaded(ask, free)

    def _least_loaded(self, ask: Ask, free: FreeHeap) -> tuple[Route | None, str]:
        if ask.hive is not None:
            pinned = free.pop(lambda route: route.hive == ask.hive)
            if pinned is not None:
                return pinned, f"least loaded on the pinned hive {ask.hive} ({pinned.in_flight}/{pinned.slots} busy)"
        route = free.pop()
        if route is None:
            return None, "every worker is full"
        where = f"; hive {ask.hive} has no free worker" if ask.hive is not None else ""
        return route, f"least loaded ({route.in_flight}/{route.slots} busy){where}"

    def _by_prefix(self, ask: Ask, free: FreeHeap, routes: list[Route]) -> tuple[Route | None, str]:
        at = _point(ask.prefix)
        tag = f"{at:016x}"[:8]
        load: float | None = None  # the model's mean load, summed over its replicas only when a replica is past half
        for rank, route in enumerate(self._order(ask, routes, at), 1):
            if rank > WALK:
                break
            if not route.free:
                continue
            if route.in_flight >= -(-route.slots // 2):
                if load is None:
                    load = (sum(map(_IN_FLIGHT, routes)) + 1) / self._ring(ask.model, None, routes).slots
                if route.in_flight >= math.ceil(LOAD_BOUND * load * route.slots):
                    continue
            return route, f"prefix {tag}: replica {rank} of its order ({route.in_flight}/{route.slots} busy)"
        fallback, reason = self._least_loaded(ask, free)
        return fallback, f"prefix {tag}: its replicas are past their bounded load; {reason}"

    def _order(self, ask: Ask, routes: list[Route], at: int) -> Iterator[Route]:
        """The prefix's replicas in order; a pinned hive's first, in the order its own ring gives them."""
        everywhere = self._ring(ask.model, None, routes)
        if ask.hive is None:
            yield from everywhere.order(at)
            return
        pinned = [route for route in routes if route.hive == ask.hive]
        if pinned:
            yield from self._ring(ask.model, ask.hive, pinned).order(at)
        yield from (route for route in everywhere.order(at) if route.hive != ask.hive)

    def _ring(self, model: str, hive: str | None, routes: list[Route]) -> Ring:
        """The ring of these replicas, made again only when they change (Route objects live as long as their
        workers)."""
        ring = self._rings.get((model, hive))
        if ring is not None and ring.source is routes:
            return ring
        if ring is None or ring.identity != tuple(map(id, routes)):
            ring = self._rings[(model, hive)] = Ring(routes)
        ring.source = routes  # the same replicas in a new list: compared once, not on every request
        return ring

    def _round_robin(self, ask: Ask, routes: list[Route], commit: bool) -> tuple[Route | None, str]:
        start = self._turn.get(ask.model, 0)
        order = [routes[(start + step) % len(routes)] for step in range(len(routes))]
        preferred = [route for route in order if route.free and route.hive == ask.hive]
        anywhere = [route for route in order if route.free]
        if not anywhere:
            return None, "every worker is full"
        route = (preferred or anywhere)[0]
        if commit:
            self._turn[ask.model] = (routes.index(route) + 1) % len(routes)
        pinned = "" if ask.hive is None or preferred else f" (pinned hive {ask.hive} has no free worker)"
        return route, f"round-robin: next free worker after turn {start}{pinned}"

    def _ask_user(self, ask: Ask, candidates: list[Route]) -> tuple[Route | None, str]:
        assert self._user is not None
        if self.disabled is not None:
            return None, self.disabled
        offered = [route.candidate() for route in candidates]
        try:
            with _budget(USER_BUDGET):
                answer = self._user(ask.as_dict(), offered)
        except BaseException as error:  # the operator's code: sys.exit() in it must not stop the queen
            return None, self._failed(f"{self.name} raised {type(error).__name__}: {error}")
        for route, offer in zip(candidates, offered, strict=True):
            if answer is offer or answer == offer or answer == route.worker_id:
                self.failures = 0
                return route, f"chosen by {self.name}"
        return None, self._failed(f"{self.name} returned {answer!r}, not a candidate")

    def _failed(self, why: str) -> str:
        self.failures += 1
        self.failed_total += 1
        log.warning("routing policy: %s; using least-loaded", why)
        if self.failures >= DISABLE_AFTER:
            self.disabled = f"{self.name} is disabled after {self.failures} failures in a row (last: {why})"
            log.error("%s; the queen routes least-loaded until a spec is applied again", self.disabled)
        return why


class _OverBudget(Exception):
    def __str__(self) -> str:
        return f"route() ran longer than {USER_BUDGET * 1000:.0f} ms"


@contextlib.contextmanager
def _budget(seconds: float) -> Iterator[None]:
    """Interrupt the user's route() past `seconds` (a timer signal; only on the main thread, where the queen's
    event loop runs)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def expire(signum: int, frame: object) -> None:
        raise _OverBudget

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def make_policy(routing_name: str, source: str | None) -> Policy:
    """The policy hive.yaml's `queen.routing` names; a policy file's source came with the spec."""
    if routing_name == "round-robin":
        return Policy(PolicyKind.ROUND_ROBIN)
    if routing_name == "least-loaded":
        return Policy(PolicyKind.LEAST_LOADED)
    if routing_name.endswith(".py"):
        if source is None:
            raise PolicyError(f"the routing policy {routing_name} was not sent with the spec")
        return Policy(PolicyKind.FILE, source, Path(routing_name).name)
    return Policy()
