"""Step definitions for cold_start.feature: the real CLI, real daemons and the real SmolLM2 model."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from pytest_bdd import given, parsers, scenarios, then, when

from tests.fleet import Fleet, make_fleet
from tests.models import SMOLLM2_SOURCE

pytestmark = pytest.mark.slow
scenarios("cold_start.feature")


class World:
    fleet: Fleet
    events: list[dict[str, Any]]
    tokens_seen_at: list[float]


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    state = World()
    state.fleet = make_fleet(tmp_path, SMOLLM2_SOURCE, replicas=1)
    yield state
    if state.fleet.ours():
        state.fleet.rbee("destroy", str(state.fleet.spec), "--yes")


@given("no workers are registered")
def no_workers(world: World) -> None:
    assert world.fleet.ours() == []
    status = world.fleet.rbee("status")
    assert status.returncode == 1 and "No queen is running" in status.stderr


@given(parsers.parse('a hive.yaml that asks for {count:d} worker of "{model}" on the local hive'))
def spec_asks(world: World, count: int, model: str) -> None:
    text = world.fleet.spec.read_text()
    assert f"model: {model}, hive: local, replicas: {count}" in text


@when("I run rbee apply with --yes")
def apply(world: World) -> None:
    result = world.fleet.rbee("apply", str(world.fleet.spec), "--yes")
    assert result.returncode == 0, result.stdout + result.stderr


@then(parsers.parse('the queen has registered {count:d} idle worker for "{model}"'))
def registered(world: World, count: int, model: str) -> None:
    deadline = time.monotonic() + 10
    while True:
        status = httpx.get(f"{world.fleet.queen_url}/v2/status", headers=world.fleet.operator).json()
        routes = [route for route in status["routes"] if route["model"] == model]
        if len(routes) == count:
            return
        assert time.monotonic() < deadline, status
        time.sleep(0.1)


@when(parsers.parse('I send a streaming chat request for "{model}" to the queen'))
def chat(world: World, model: str) -> None:
    world.events, world.tokens_seen_at = [], []
    body = {
        "model": model,
        "stream": True,
        "max_tokens": 16,
        "messages": [{"role": "user", "content": "Say something nice."}],
    }
    with httpx.stream(
        "POST", f"{world.fleet.queen_url}/v1/chat/completions", json=body, headers=world.fleet.keyed, timeout=60
    ) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        for line in response.iter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                world.events.append(json.loads(line[6:]))
                world.tokens_seen_at.append(time.monotonic())
            elif line == "data: [DONE]":
                world.events.append({"done": True})


@then("the worker streams tokens via SSE")
def streams(world: World) -> None:
    contents = [e["choices"][0]["delta"].get("content") for e in world.events if e.get("choices")]
    assert len([c for c in contents if c]) >= 2
    assert world.tokens_seen_at[-1] > world.tokens_seen_at[0], "tokens arrive over time, not in one piece"


@then("inference completes successfully")
def completes(world: World) -> None:
    finishes = [e["choices"][0]["finish_reason"] for e in world.events if e.get("choices")]
    assert finishes[-1] in ("stop", "length")
    assert world.events[-1] == {"done": True}


@then("rbee destroy leaves no rbee process")
def destroyed(world: World) -> None:
    result = world.fleet.rbee("destroy", str(world.fleet.spec), "--yes")
    assert result.returncode == 0, result.stdout + result.stderr
    assert world.fleet.ours() == []
