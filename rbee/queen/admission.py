"""Admission control per model: slots per worker, a bounded FIFO queue with a deadline, and a concurrency
limit per API key. Refusals are exact: queue full -> 503, key limit -> 429 (both with Retry-After), waited past
the deadline -> 504, no worker at all -> 503.

Counters are exception-safe: every admitted request is released exactly once by `Ticket.release`, which the
queen calls in a `finally`; a waiter that is cancelled or times out leaves the queue and gives back what it held.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from rbee.queen.scheduling import Ask, FreeHeap, Policy, Route


class _Deadline(Exception):
    """A queued request's deadline passed before a worker was free."""


def _expire(future: asyncio.Future[Route]) -> None:
    if not future.done():
        future.set_exception(_Deadline())


class Refusal(Exception):
    def __init__(self, status: int, reason: str, message: str, retry_after: int | None = None) -> None:
        super().__init__(message)
        self.status, self.reason, self.retry_after = status, reason, retry_after


@dataclass(eq=False)
class Waiter:
    ask: Ask
    future: asyncio.Future[Route]
    since: float


@dataclass
class Lane:
    """One model's workers and queue."""

    routes: dict[str, Route] = field(default_factory=dict)
    free: FreeHeap = field(default_factory=FreeHeap)
    queue: deque[Waiter] = field(default_factory=deque)
    live: list[Route] = field(default_factory=list)
    """The routes that are not gone, rebuilt when the set changes (never per request)."""

    def rebuild(self) -> None:
        self.live = [route for route in self.routes.values() if not route.gone]


@dataclass(eq=False)
class Ticket:
    """An admitted request: the worker it holds and how long it queued. Release exactly once."""

    admission: Admission
    route: Route
    key: str | None
    queued_seconds: float
    reason: str
    released: bool = False

    def release(self) -> None:
        if not self.released:
            self.released = True
            self.admission._release(self.route, self.key)


class Admission:
    def __init__(self, policy: Policy | None = None, max_queue: int = 64) -> None:
        self.policy = policy or Policy()
        self.max_queue = max_queue
        self.lanes: dict[str, Lane] = {}
        self.key_load: Counter[str] = Counter()
        self.refusals: Counter[tuple[str, str]] = Counter()
        self.wake: Callable[[str], bool] | None = None
        """Asked to start a worker for a model when a request finds none running or every one busy; True when
        one is starting, so the request may wait for it (within its deadline)."""

    def sync(self, routes: Iterable[Route]) -> None:
        """Make the lanes hold exactly these workers; a worker that left keeps serving what it holds."""
        seen: set[str] = set()
        changed: set[str] = set()
        for route in routes:
            seen.add(route.key)
            lane = self.lanes.setdefault(route.model, Lane())
            known = lane.routes.get(route.key)
            if known is not route:
                if known is not None:
                    known.gone = True
                lane.routes[route.key] = route
                changed.add(route.model)
        for model, lane in self.lanes.items():
            for key in [key for key in lane.routes if key not in seen or lane.routes[key].gone]:
                lane.routes.pop(key).gone = True
                changed.add(model)
        for model in changed:
            lane = self.lanes[model]
            lane.rebuild()
            for route in lane.live:
                lane.free.push(route)
            self._dispatch(lane)

    async def acquire(self, ask: Ask, wait: float, key_limit: int | None = None) -> Ticket:
        if ask.key is not None and key_limit is not None and self.key_load[ask.key] >= key_limit:
            raise self._refuse(
                ask, 429, "key_limit", f"this API key already has {key_limit} requests in flight or queued", 1
            )
        lane = self.lanes.get(ask.model)
        if lane is None or not lane.live:
            if self.wake is None or not self.wake(ask.model):
                raise self._refuse(
                    ask, 503, "no_worker", f"no worker of model {ask.model} is ready; check `rbee status`", 5
                )
            lane = self.lanes.setdefault(ask.model, Lane())
        if ask.key is not None:
            self.key_load[ask.key] += 1
        try:
            return await self._wait_for_route(lane, ask, wait)
        except BaseException:
            self._forget_key(ask.key)
            raise

    async def _wait_for_route(self, lane: Lane, ask: Ask, wait: float) -> Ticket:
        started = time.monotonic()
        if not lane.queue:
            route, reason = self.policy.choose(ask, lane.free, lane.live)
            if route is not None:
                self._assign(lane, route)
                return Ticket(self, route, ask.key, 0.0, reason)
        if len(lane.queue) >= self.max_queue:
            raise self._refuse(
                ask, 503, "queue_full", f"the queue for model {ask.model} is full ({self.max_queue} waiting)", 1
            )
        if self.wake is not None and lane.live:
            self.wake(ask.model)  # every worker is busy: start a parked one, if the model has any
        loop = asyncio.get_running_loop()
        waiter = Waiter(ask, loop.create_future(), started)
        lane.queue.append(waiter)
        timer = loop.call_later(wait, _expire, waiter.future)
        try:
            route = await waiter.future
        except _Deadline:
            raise self._refuse(
                ask, 504, "deadline", f"no worker of model {ask.model} was free within {wait:g} s", None
            ) from None
        except asyncio.CancelledError:
            # Cancelled in the same step a worker was handed over: give the worker back.
            if waiter.future.done() and not waiter.future.cancelled() and waiter.future.exception() is None:
                self._release(waiter.future.result(), None)
            raise
        finally:
            timer.cancel()
            if waiter in lane.queue:
                lane.queue.remove(waiter)
        return Ticket(self, route, ask.key, time.monotonic() - started, "the first free worker after queueing")

    def _assign(self, lane: Lane, route: Route) -> None:
        route.in_flight += 1
        route.last_used = time.monotonic()
        lane.free.push(route)

    def _forget_key(self, key: str | None) -> None:
        if key is not None:
            self.key_load[key] -= 1
            if self.key_load[key] <= 0:
                del self.key_load[key]

    def fail_waiting(self, model: str, status: int, reason: str, message: str) -> None:
        """Refuse every request queued for `model` now (the worker they waited for will not come)."""
        lane = self.lanes.get(model)
        while lane is not None and lane.queue:
            waiter = lane.queue.popleft()
            if not waiter.future.done():
                self.refusals[(model, reason)] += 1
                waiter.future.set_exception(Refusal(status, reason, message, 5))

    def has_free(self, model: str) -> bool:
        """Whether a request for `model` would be given a worker now, without queueing."""
        lane = self.lanes.get(model)
        return lane is not None and not lane.queue and any(route.free for route in lane.live)

    def has_workers(self, model: str) -> bool:
        lane = self.lanes.get(model)
        return lane is not None and bool(lane.live)

    def _release(self, route: Route, key: str | None) -> None:
        route.in_flight = max(0, route.in_flight - 1)
        route.last_used = time.monotonic()
        self._forget_key(key)
        lane = self.lanes.get(route.model)
        if lane is None or route.gone:
            return
        lane.free.push(route)
        self._dispatch(lane)

    def _dispatch(self, lane: Lane) -> None:
        while lane.queue:
            waiter = lane.queue[0]
            if waiter.future.done():
                lane.queue.popleft()
                continue
            route, _ = self.policy.choose(waiter.ask, lane.free, lane.live)
            if route is None:
                return
            lane.queue.popleft()
            self._assign(lane, route)
            waiter.future.set_result(route)

    def _refuse(self, ask: Ask, status: int, reason: str, message: str, retry_after: int | None) -> Refusal:
        self.refusals[(ask.model, reason)] += 1
        return Refusal(status, reason, message, retry_after)

    def explain(self, ask: Ask) -> tuple[list[dict[str, object]], str | None, str]:
        """What the policy would pick for `ask` now, and why, without admitting anything."""
        lane = self.lanes.get(ask.model)
        if lane is None or not lane.live:
            return [], None, f"no worker of model {ask.model} is ready"
        candidates = [route.candidate() for route in lane.live]
        route, reason = self.policy.choose(ask, lane.free, lane.live, commit=False)
        if route is None:
            return candidates, None, f"{reason}; the request would wait in the queue ({len(lane.queue)} waiting)"
        lane.free.push(route)
        return candidates, route.key, reason

    def queue_depth(self, model: str) -> int:
        lane = self.lanes.get(model)
        return sum(1 for waiter in lane.queue if not waiter.future.done()) if lane else 0

    def in_flight(self) -> list[Route]:
        return [route for lane in self.lanes.values() for route in lane.routes.values()]
