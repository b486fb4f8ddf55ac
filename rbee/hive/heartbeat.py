"""Heartbeats: once a queen subscribes (`POST /v1/heartbeat` with its URL and interval), the hive sends its whole
state to it every interval, and at once (debounced) whenever a worker changes state, so the queen routes to a new
worker without waiting for a poll. Several queens sharing one store each subscribe, and each gets the beats (at
most MAX_QUEENS; a new one beyond that replaces the one that subscribed longest ago). A queen the hive cannot
reach is tried again at the interval; it then polls the hive instead."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import httpx

from rbee.api import wire
from rbee.api.state import HiveState
from rbee.clients import tls

log = logging.getLogger("rbee.hive")
DEBOUNCE = 0.05
MAX_QUEENS = 8


@dataclass
class Subscription:
    url: str
    interval: float
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None
    sent: int = 0


class Heartbeat:
    def __init__(self, state: Callable[[], HiveState], token: str | None) -> None:
        self.state = state
        self.token = token
        self.queens: dict[str, Subscription] = {}
        """By URL, oldest subscription first."""

    @property
    def sent(self) -> int:
        return sum(queen.sent for queen in self.queens.values())

    def subscribe(self, url: str, interval: float) -> None:
        url = url.rstrip("/")
        found = self.queens.get(url)
        if found is None:
            log.info("sending heartbeats to %s every %g s", url, interval)
            if len(self.queens) >= MAX_QUEENS:
                oldest = next(iter(self.queens))
                log.info("no longer sending heartbeats to %s (%d queens subscribed since)", oldest, MAX_QUEENS)
                self._drop(oldest)
            found = self.queens[url] = Subscription(url, interval)
        found.interval = interval
        if found.task is None or found.task.done():
            found.task = asyncio.get_running_loop().create_task(self._run(found))
        found.changed.set()

    def changed(self) -> None:
        for queen in self.queens.values():
            queen.changed.set()

    def _drop(self, url: str) -> None:
        gone = self.queens.pop(url)
        if gone.task is not None:
            gone.task.cancel()

    async def stop(self) -> None:
        for queen in list(self.queens.values()):
            if queen.task is not None:
                queen.task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await queen.task

    async def _run(self, queen: Subscription) -> None:
        headers = {"Content-Type": "application/json", **wire.bearer(self.token)}
        failing = False
        async with httpx.AsyncClient(headers=headers, trust_env=False, timeout=5.0, verify=tls.context()) as client:
            while True:
                queen.changed.clear()
                try:
                    state = self.state()
                    response = await client.post(
                        f"{queen.url}/v2/hives/{state.name}/heartbeat", content=state.model_dump_json()
                    )
                    response.raise_for_status()
                    queen.sent += 1
                    if failing:
                        log.info("heartbeats reach the queen at %s again", queen.url)
                    failing = False
                except httpx.HTTPError as error:
                    if not failing:
                        log.warning("the queen at %s did not take a heartbeat (%s); retrying", queen.url, error)
                    failing = True
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(queen.changed.wait(), queen.interval)
                await asyncio.sleep(DEBOUNCE)
