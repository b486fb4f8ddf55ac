"""Step definitions for fleet_life.feature: the real CLI and daemons of one local SmolLM2 fleet."""

from __future__ import annotations

import json
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from pytest_bdd import given, parsers, scenarios, then, when

from rbee import __version__
from tests.fleet import Fleet, applied_fleet, make_fleet
from tests.models import SMOLLM2_SOURCE

pytestmark = pytest.mark.slow
scenarios("fleet_life.feature")


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    fleet = make_fleet(tmp_path_factory.mktemp("life"), SMOLLM2_SOURCE)
    with applied_fleet(fleet):
        yield fleet


class World:
    def __init__(self, fleet: Fleet) -> None:
        self.fleet = fleet
        self.result: subprocess.CompletedProcess[str] | None = None
        self.response: httpx.Response | None = None
        self.events: list[dict[str, Any]] = []
        self.worker: dict[str, Any] = {}
        self.catalog: list[tuple[Any, ...]] = []
        self.last_event = 0
        self.process: subprocess.Popen[str] | None = None


@pytest.fixture
def world(fleet: Fleet) -> Iterator[World]:
    state = World(fleet)
    yield state
    if state.process is not None and state.process.poll() is None:
        state.process.kill()
        state.process.wait(timeout=10)


def hive_state(fleet: Fleet) -> dict[str, Any]:
    state: dict[str, Any] = httpx.get(f"{fleet.hive_url}/v1/state", headers=fleet.hive_auth()).json()
    return state


def catalog(fleet: Fleet) -> list[tuple[Any, ...]]:
    return [(e["name"], e["source"], e["format"], e["size_bytes"], e["sha256"]) for e in hive_state(fleet)["catalog"]]


def events_after(fleet: Fleet, after: int) -> list[dict[str, Any]]:
    answer = httpx.get(f"{fleet.queen_url}/v2/events", params={"after": after}, headers=fleet.operator).json()
    found: list[dict[str, Any]] = answer["events"]
    return found


def finished(world: World) -> subprocess.CompletedProcess[str]:
    assert world.result is not None, "no command ran"
    return world.result


def answered(world: World) -> httpx.Response:
    assert world.response is not None, "nothing was asked"
    return world.response


@given(parsers.parse('a fleet of 1 "smollm2" worker applied on the local hive'))
def applied(world: World) -> None:
    (world.worker,) = hive_state(world.fleet)["workers"]
    assert world.worker["state"] == "idle", world.worker
    world.catalog = catalog(world.fleet)
    seen = events_after(world.fleet, 0)
    world.last_event = max((int(e["id"]) for e in seen), default=0)


@given(parsers.parse('"rbee {command}" is running'))
def running(world: World, command: str) -> None:
    world.process = subprocess.Popen(
        [sys.executable, "-m", "rbee", *shlex.split(command)],
        env=world.fleet.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
    )
    time.sleep(2.0)
    assert world.process.poll() is None, "it ended by itself"


@when(parsers.parse('I run "rbee {command}"'))
def run(world: World, command: str) -> None:
    world.result = world.fleet.rbee(*shlex.split(command))


@when(parsers.parse('I create a task for "{model}" with {count:d} tokens and read its events'))
def task(world: World, model: str, count: int) -> None:
    body = {"model": model, "prompt": "Once upon a time", "max_tokens": count, "temperature": 0}
    created = httpx.post(f"{world.fleet.queen_url}/v2/tasks", json=body, headers=world.fleet.keyed)
    assert created.status_code == 201, created.text
    url = f"{world.fleet.queen_url}{created.json()['events']}"
    with httpx.stream("GET", url, headers=world.fleet.keyed, timeout=60) as stream:
        world.events = [json.loads(line[5:]) for line in stream.iter_lines() if line.startswith("data:")]


@when("I ask the hive for /health")
def hive_health(world: World) -> None:
    world.response = httpx.get(f"{world.fleet.hive_url}/health")


@when("I ask the worker for /v1/ready with its credential")
def worker_ready(world: World) -> None:
    url = f"http://127.0.0.1:{world.worker['port']}/v1/ready"
    world.response = httpx.get(url, headers=world.fleet.worker_auth(world.worker["id"]))


@when(parsers.parse('I ask the queen for a chat with model "{model}"'))
def chat(world: World, model: str) -> None:
    body = {"model": model, "messages": [{"role": "user", "content": "Hi"}]}
    world.response = httpx.post(f"{world.fleet.queen_url}/v1/chat/completions", json=body, headers=world.fleet.keyed)


@when("the user presses Ctrl+C")
def interrupt(world: World) -> None:
    assert world.process is not None
    world.process.send_signal(signal.SIGINT)
    out, err = world.process.communicate(timeout=15)
    world.result = subprocess.CompletedProcess(world.process.args, world.process.returncode, out, err)


@then(parsers.parse("rbee exits with {code:d}"))
def exits(world: World, code: int) -> None:
    result = finished(world)
    assert result.returncode == code, (result.returncode, result.stdout, result.stderr)


@then("stdout is not empty")
def some_stdout(world: World) -> None:
    assert finished(world).stdout.strip(), finished(world).stderr


@then("the worker is idle with the same pid as before")
def same_worker(world: World) -> None:
    (now,) = hive_state(world.fleet)["workers"]
    assert (now["id"], now["pid"], now["state"]) == (world.worker["id"], world.worker["pid"], "idle"), now


@then("the hive's catalog is as it was")
def same_catalog(world: World) -> None:
    assert catalog(world.fleet) == world.catalog


@then("the queen recorded no apply and no start since the fleet came up")
def nothing_applied(world: World) -> None:
    acted = [e for e in events_after(world.fleet, world.last_event) if e["kind"] in ("apply", "applied", "autoscale")]
    assert not acted, acted


@then("the events are tokens numbered from 0, then one done event counting them")
def token_events(world: World) -> None:
    *tokens, done = world.events
    assert [event["index"] for event in tokens] == list(range(len(tokens))) and tokens, world.events
    assert done["done"] is True and done["total_tokens"] == len(tokens), done


@then(parsers.parse('it answers 200 with status "{status}", name "{name}" and rbee\'s version'))
def health_body(world: World, status: str, name: str) -> None:
    response = answered(world)
    assert response.status_code == 200 and response.json() == {"status": status, "name": name, "version": __version__}


@then(parsers.parse('it answers 200 with ready true and state "{state}"'))
def ready_body(world: World, state: str) -> None:
    response = answered(world)
    assert response.status_code == 200, response.text
    assert response.json()["ready"] is True and response.json()["state"] == state


@then("without its credential it answers 401")
def needs_credential(world: World) -> None:
    assert httpx.get(f"http://127.0.0.1:{world.worker['port']}/v1/ready").status_code == 401


@then("stdout shows smollm2 as gguf of 98.4 MB")
def listed(world: World) -> None:
    line = next(line for line in finished(world).stdout.splitlines() if "smollm2" in line)
    assert "gguf" in line and "98.4 MB" in line, line


@then(parsers.parse('stdout shows what its header says: "{a}", "{b}", "{c}" and "{d}"'))
def header_facts(world: World, a: str, b: str, c: str, d: str) -> None:
    words = " ".join(finished(world).stdout.split())  # the table wraps a long cell over lines
    for word in (a, b, c, d):
        assert word in words, words


@then("stdout says smollm2 is in local's catalog")
def pulled(world: World) -> None:
    assert "smollm2 is in local's catalog (98.4 MB)" in finished(world).stdout, finished(world).stdout


@then(
    parsers.parse(
        'it answers {status:d} with an OpenAI error naming "{model}", type "{kind}", param "{param}", code "{code}"'
    )
)
def openai_error(world: World, status: int, model: str, kind: str, param: str, code: str) -> None:
    response = answered(world)
    assert response.status_code == status
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}, error
    assert model in error["message"] and (error["type"], error["param"], error["code"]) == (kind, param, code)


@then(parsers.parse('stdout shows "{target}" as Ready'))
def shows_ready(world: World, target: str) -> None:
    line = next(line for line in finished(world).stdout.splitlines() if target in line)
    assert "Ready" in line, line


@then("it printed the hive's log lines and exits with 0")
def printed_logs(world: World) -> None:
    result = finished(world)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert 1 <= len(lines) <= 5 and all(" hive " in line for line in lines), lines
