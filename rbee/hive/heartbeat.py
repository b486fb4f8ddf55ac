"""Heartbeats: once the queen subscribes (`POST /v1/heartbeat` with its URL and interval), the hive sends its
whole state to the queen every interval, and at once (debounced) whenever a worker changes state, so the queen
routes to a new worker without waiting for a poll. A hive the queen cannot be reached from keeps trying at the
interval; the queen then falls back to polling it."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

import httpx

from rbee.api import wire
from rbee.api.state import HiveState
from rbee.clients import tls

log = logging.getLogger("rbee.hive")
DEBOUNCE = 0.05


class Heartbeat:
    def __init__(self, state: Callable[[], HiveState], token: str | None) -> None:
        self.state = state
        self.token = token
        self.url: str | None = None
        self.interval = 30.0
        self.sent = 0
        self._changed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def subscribe(self, url: str, interval: float) -> None:
        if url != self.url:
            log.info("sending heartbeats to %s every %g s", url, interval)
        self.url, self.interval = url.rstrip("/"), interval
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run())
        self.changed()

    def changed(self) -> None:
        self._changed.set()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        headers = {"Content-Type": "application/json", **wire.bearer(self.token)}
        failing = False
        async with httpx.AsyncClient(headers=headers, trust_env=False, timeout=5.0, verify=tls.context()) as client:
            while True:
                self._changed.clear()
                try:
                    state = self.state()
                    response = await client.post(
                        f"{self.url}/v2/hives/{state.name}/heartbeat", content=state.model_dump_json()
                    )
                    response.raise_for_status()
                    self.sent += 1
                    if failing:
                        log.info("heartbeats reach the queen again")
                    failing = False
                except httpx.HTTPError as error:
                    if not failing:
                        log.warning("the queen at %s did not take a heartbeat (%s); retrying", self.url, error)
                    failing = True
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._changed.wait(), self.interval)
                await asyncio.sleep(DEBOUNCE)
