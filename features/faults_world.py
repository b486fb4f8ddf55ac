"""What the fault scenarios share (faults.feature, hung_hive.feature): the world a scenario's steps fill in,
the fleet of the Background, and the looks at the hive and the queen that the steps take."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.fleet import Fleet, make_fleet
from tests.models import SMOLLM2_SOURCE

INTERVAL = 2.0
LOAD_ALLOWANCE = 15.0
"""Loading SmolLM2 takes ~1.5 s here; a busy CI machine gets this much."""
BACKGROUND = (
    'a fleet of 1 "smollm2" worker applied with a reconcile interval of {seconds:d} seconds and heartbeats every second'
)


class World:
    fleet: Fleet
    pids: dict[str, int]
    hive_pid: int
    killed_at: float
    signalled_pid: int
    stream_lines: list[tuple[float, str]]
    generation: int
    results: list[str]
    refusals: list[tuple[int, str]]
    hung: contextlib.ExitStack
    hung_port: int
    applied: Any
    apply_seconds: float


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    state = World()
    yield state
    if hasattr(state, "fleet") and state.fleet.ours():
        state.fleet.rbee("destroy", str(state.fleet.spec), "--yes")


def auth(world: World) -> dict[str, str]:
    """The operator's credential (the queen's operator API)."""
    return world.fleet.operator


def hive_state(world: World) -> dict[str, Any]:
    return dict(httpx.get(f"{world.fleet.hive_url}/v1/state", headers=world.fleet.hive_auth(), timeout=5).json())


def queen_status(world: World) -> dict[str, Any]:
    return dict(httpx.get(f"{world.fleet.queen_url}/v2/status", headers=auth(world), timeout=5).json())


def running_workers(world: World) -> dict[str, int]:
    try:
        workers = hive_state(world)["workers"]
    except httpx.HTTPError:
        return {}
    return {w["id"]: w["pid"] for w in workers if w["state"] in ("idle", "busy")}


def wait_for(what: str, check: Any, seconds: float, every: float = 0.1) -> Any:
    deadline = time.monotonic() + seconds
    while True:
        value = check()
        if value:
            return value
        assert time.monotonic() < deadline, f"{what}: not within {seconds:g} s"
        time.sleep(every)


def chat(world: World, max_tokens: int = 6, stream: bool = False, timeout: float = 60) -> httpx.Response:
    body = {"model": "smollm2", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": max_tokens}
    return httpx.post(
        f"{world.fleet.queen_url}/v1/chat/completions",
        json={**body, "stream": stream},
        headers=world.fleet.keyed,
        timeout=timeout,
    )


def apply_fleet(world: World, tmp_path: Path, seconds: int) -> None:
    """The Background's step; each scenario module registers it (pytest-bdd finds steps in the test's module)."""
    world.fleet = make_fleet(
        tmp_path, SMOLLM2_SOURCE, replicas=1, reconcile=f"{seconds}s", queen="heartbeat_interval: 1s"
    )
    applied = world.fleet.rbee("apply", str(world.fleet.spec), "--yes")
    assert applied.returncode == 0, applied.stdout + applied.stderr
    world.pids = wait_for("a running worker", lambda: running_workers(world), 10)
