"""Step definitions for hung_hive.feature: a second hive that answers its state and hangs on every change
must fail only its own changes."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time

import pytest
from pytest_bdd import given, parsers, scenarios, then, when
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from features.faults_world import BACKGROUND, World, apply_fleet, chat, running_workers, wait_for, world
from rbee import __version__
from rbee.api.state import HiveState
from tests.servers import serve

pytestmark = pytest.mark.slow
scenarios("hung_hive.feature")
fleet = given(parsers.parse(BACKGROUND))(apply_fleet)
__all__ = ["world"]  # the scenario's fixture


def hung_hive() -> Starlette:
    """Answers /health and /v1/state like a hive of this rbee with nothing in it, and never answers a change."""

    async def health(_: Request) -> Response:
        return JSONResponse({"status": "ok", "name": "hung", "version": __version__})

    async def state(_: Request) -> Response:
        return Response(HiveState(name="hung", version=__version__).model_dump_json(), media_type="application/json")

    async def hang(_: Request) -> Response:
        await asyncio.sleep(3600)
        return Response(status_code=500)

    return Starlette(
        routes=[
            Route("/health", health),
            Route("/v1/state", state),
            Route("/v1/{path:path}", hang, methods=["POST", "DELETE"]),
        ]
    )


@given("a second hive that answers its state but never answers a change")
def second_hung_hive(world: World) -> None:
    world.hung = contextlib.ExitStack()
    world.hung_port = world.hung.enter_context(serve(hung_hive()))


@when("hive.yaml puts a worker on each hive and is applied")
def apply_with_hung(world: World) -> None:
    text = world.fleet.spec.read_text()
    hung = f"{{name: hung, listen: '127.0.0.1:{world.hung_port}', data_dir: '{world.fleet.root / 'hung-data'}'}}"
    text = text.replace("hives:\n", f"hives:\n  - {hung}\n", 1)
    text += "  - {model: smollm2, hive: hung, replicas: 1}\n"
    world.fleet.spec.write_text(text)
    started = time.monotonic()
    world.applied = world.fleet.rbee("apply", str(world.fleet.spec), "--yes", timeout=300)
    world.apply_seconds = time.monotonic() - started


@then("rbee apply ends within 90 seconds with a sentence about the hung hive")
def apply_ended(world: World) -> None:
    said = world.applied.stdout + world.applied.stderr
    try:
        assert world.apply_seconds < 90, world.apply_seconds
        assert world.applied.returncode == 1, said
        assert "hive hung did not answer in time" in said, said
        assert "Traceback" not in said
    except AssertionError:
        world.fleet.rbee("suspend")
        world.hung.close()
        raise


@then("the first hive's worker is unchanged and serves requests")
def first_unchanged(world: World) -> None:
    assert running_workers(world) == world.pids
    assert chat(world).status_code == 200


@then("a worker killed on the first hive is replaced while the hung hive still hangs")
def healed_beside_hung(world: World) -> None:
    try:
        (pid,) = world.pids.values()
        os.kill(pid, signal.SIGKILL)
        replaced = wait_for(
            "a replacement worker", lambda: {k: v for k, v in running_workers(world).items() if v != pid}, 90, 0.5
        )
        assert replaced and chat(world).status_code == 200
    finally:  # the loop must not go on to install a real hive where the fake one was
        world.fleet.rbee("suspend")
        world.hung.close()
