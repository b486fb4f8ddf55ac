"""The queen's side of heartbeats: it subscribes each hive it reaches (telling it the queen's URL as seen from
that hive, and the interval), records each beat, stops polling hives that beat, and notices a hive that missed
three beats: its routes go, and the next reconcile pass examines it (over SSH where it is remote)."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

import aiohttp

from rbee import daemon
from rbee.api import wire
from rbee.api.state import HiveState
from rbee.spec.schema import HiveSpec

log = logging.getLogger("rbee.queen")
MISSED = 3
"""A hive that misses this many beats in a row is no longer trusted to be up."""


@dataclass(frozen=True, slots=True)
class Beat:
    at: float
    state: HiveState


class Heartbeats:
    def __init__(self, listen: str | None, tls: bool = False) -> None:
        self.listen = listen
        self.scheme = "https" if tls else "http"
        self.beats: dict[str, Beat] = {}
        self.asked: dict[str, float] = {}
        self.distrusted: set[str] = set()
        """Hives whose last beat was contradicted (seen down, a worker lost): polled until they beat again."""
        self._sources: dict[str, str | None] = {}

    def record(self, state: HiveState) -> None:
        self.beats[state.name] = Beat(time.monotonic(), state)
        self.distrusted.discard(state.name)

    def distrust(self, name: str) -> None:
        if name in self.beats:
            self.distrusted.add(name)

    def fresh(self, name: str, interval: float, now: float) -> bool:
        beat = self.beats.get(name)
        return beat is not None and name not in self.distrusted and now - beat.at < MISSED * interval

    def silent_for(self, name: str, now: float) -> float | None:
        """Seconds since the hive's last beat, or None if it never beat."""
        beat = self.beats.get(name)
        return None if beat is None else now - beat.at

    def ages(self, now: float) -> dict[str, float]:
        return {name: round(now - beat.at, 3) for name, beat in self.beats.items()}

    def due(self, name: str, interval: float, now: float) -> bool:
        """Whether to (re)subscribe a hive that answered a poll: never asked, or asked long enough ago that its
        beats should have arrived."""
        asked = self.asked.get(name)
        return asked is None or now - asked >= MISSED * interval

    async def subscribe(
        self, session: aiohttp.ClientSession, hive: HiveSpec, interval: float, credential: str | None
    ) -> bool:
        self.asked[hive.name] = time.monotonic()
        url = await self.url_for(hive)
        if url is None:
            return False
        try:
            async with asyncio.timeout(5.0):
                async with session.post(
                    f"{hive.api_url}/v1/heartbeat",
                    json={"url": url, "interval": interval},
                    headers=wire.bearer(credential),
                ) as response:
                    return response.status == 200
        except (TimeoutError, aiohttp.ClientError, OSError) as error:
            log.info("could not subscribe hive %s to heartbeats: %s", hive.name, error)
            return False

    async def url_for(self, hive: HiveSpec) -> str | None:
        """The queen's URL as `hive` can reach it, or None when it cannot (the queen listens on loopback and
        the hive is another machine: the queen then keeps polling it)."""
        if self.listen is None:
            return None
        host, _, port = self.listen.rpartition(":")
        host = host.strip("[]")
        target = urlsplit(hive.api_url).hostname or ""
        if host in ("0.0.0.0", "::", ""):
            if target not in self._sources:
                self._sources[target] = await asyncio.to_thread(daemon.route_source, target)
            source = self._sources[target]
            return None if source is None else f"{self.scheme}://{_bracket(source)}:{port}"
        if _loopback(host) and not _loopback(target):
            return None
        return f"{self.scheme}://{_bracket(host)}:{port}"


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _bracket(host: str) -> str:
    return f"[{host}]" if ":" in host else host
