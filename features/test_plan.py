"""Step definitions for plan.feature: the real `rbee` process against a real HTTP hive state."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pytest_bdd import given, parsers, scenarios, then, when
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from rbee import __version__
from tests.servers import free_port, serve

scenarios("plan.feature")


class World:
    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.port = free_port()
        self.spec = tmp_path / "hive.yaml"
        self.result: subprocess.CompletedProcess[str] | None = None
        self.stack = contextlib.ExitStack()


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    state = World(tmp_path)
    with state.stack:
        yield state


@given(parsers.parse('a hive.yaml with one local hive "{hive}" serving model "{model}" with {count:d} replicas'))
def spec_file(world: World, hive: str, model: str, count: int) -> None:
    world.spec.write_text(
        f"hives:\n  - {{name: {hive}, listen: '127.0.0.1:{world.port}', data_dir: '{world.tmp_path / 'data'}'}}\n"
        f"models:\n  - {{name: {model}, source: 'file:///models/{model}.gguf'}}\n"
        f"workers:\n  - {{model: {model}, hive: {hive}, replicas: {count}}}\n"
    )


@given(parsers.parse('nothing runs on hive "{hive}"'))
def nothing_runs(world: World, hive: str) -> None:
    """The hive's port is free and no install marker exists in its data dir."""


@given(parsers.parse('hive "{hive}" runs model "{model}" with {count:d} idle workers'))
def hive_runs(world: World, hive: str, model: str, count: int, version: str = __version__) -> None:
    state: dict[str, Any] = {
        "name": hive,
        "version": version,
        "catalog": [{"name": model, "source": f"file:///models/{model}.gguf", "format": "gguf"}],
        "workers": [
            {"id": f"w-{i}", "model": model, "backend": "gguf", "state": "idle", "port": 8001 + i} for i in range(count)
        ],
    }

    async def get_state(request: Request) -> JSONResponse:
        return JSONResponse(state)

    world.stack.enter_context(serve(Starlette(routes=[Route("/v1/state", get_state)]), world.port))


@given(parsers.parse('hive "{hive}" runs rbee {version} with model "{model}" and {count:d} idle workers'))
def hive_runs_version(world: World, hive: str, version: str, model: str, count: int) -> None:
    hive_runs(world, hive, model, count, version)


@when("I run rbee plan with --detailed-exitcode")
def run_plan(world: World) -> None:
    world.result = subprocess.run(
        [sys.executable, "-m", "rbee", "plan", str(world.spec), "--detailed-exitcode", "--timeout", "2"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "RBEE_HOME": str(world.tmp_path / "home")},
    )


def output(world: World) -> str:
    assert world.result is not None
    return world.result.stdout


@then(parsers.parse('the plan installs and starts hive "{hive}"'))
def installs_and_starts(world: World, hive: str) -> None:
    assert f"+ install   hive {hive}" in output(world)
    assert f"+ start     hive {hive}" in output(world)


@then(parsers.parse('the plan adds model "{model}" to hive "{hive}"'))
def adds_model(world: World, model: str, hive: str) -> None:
    text = output(world)
    assert f"hive {hive} (" in text
    assert f"+ add       model {model}" in text


@then(parsers.parse('the plan starts {count:d} workers of "{model}"'))
def starts_workers(world: World, count: int, model: str) -> None:
    assert f"+ start     workers {model} x{count}" in output(world)


@then(parsers.parse('the plan ends with "{line}"'))
def ends_with(world: World, line: str) -> None:
    assert output(world).rstrip().splitlines()[-1] == line


@then(parsers.parse("rbee exits with {code:d}"))
def exits_with(world: World, code: int) -> None:
    assert world.result is not None
    assert world.result.returncode == code, world.result.stderr


@then(parsers.parse('the plan waits on hive "{hive}", naming rbee {theirs} and this rbee\'s version'))
def waits_naming_versions(world: World, hive: str, theirs: str) -> None:
    line = next(
        line for line in output(world).splitlines() if f"hive {hive} " in line and line.lstrip().startswith("!")
    )
    assert f"runs rbee {theirs}, newer than this rbee {__version__}" in line, line
    assert "upgrade rbee here" in line and "rather than downgrade the hive" in line, line
