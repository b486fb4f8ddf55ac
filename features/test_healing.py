"""Step definitions for healing.feature: two namespace hosts with their own sshd send heartbeats over the bridge
to a queen listening on all addresses; every healing step is the queen's own, no rbee command is run."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from pytest_bdd import given, parsers, scenarios, then, when

from tests import hosts as test_hosts
from tests.e2e.test_ssh_hives import spec_text
from tests.fleet import Fleet, make_fleet

pytestmark = pytest.mark.slow
scenarios("healing.feature")


@pytest.fixture(scope="module")
def machines() -> Iterator[test_hosts.Hosts]:
    with test_hosts.running(2) as made:
        yield made


@pytest.fixture(scope="module")
def fleet(machines: test_hosts.Hosts, smollm2: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    fleet = make_fleet(tmp_path_factory.mktemp("healing"), f"file://{smollm2}")
    port = int(fleet.queen_url.rsplit(":", 1)[1])
    text = spec_text(machines, smollm2, {"node1": 1, "node2": 1}, queen_port=port).replace(
        f"queen: {{listen: '127.0.0.1:{port}'}}",
        f"queen: {{listen: '0.0.0.0:{port}', reconcile_interval: 2s, heartbeat_interval: 1s}}",
    )
    fleet.spec.write_text(text)
    fleet.queen_url = fleet.queen_url.replace("http://", "https://")  # off loopback, the queen serves TLS
    applied = fleet.rbee("apply", str(fleet.spec), "--yes")
    assert applied.returncode == 0, applied.stdout + applied.stderr
    yield fleet
    fleet.rbee("destroy", str(fleet.spec), "--yes")


class World:
    def __init__(self, fleet: Fleet, machines: test_hosts.Hosts) -> None:
        self.fleet, self.machines = fleet, machines
        self.before: dict[str, list[str]] = {}

    def host(self, name: str) -> test_hosts.Host:
        return next(host for host in self.machines.hosts if host.name == name)

    def pids(self, name: str, what: str) -> list[str]:
        lines = self.host(name).run("ps -eo pid=,args=").stdout.splitlines()
        return [line.split()[0] for line in lines if what in line]

    def status(self) -> dict[str, Any]:
        reply = httpx.get(
            f"{self.fleet.queen_url}/v2/status", headers=self.fleet.operator, timeout=5, verify=self.fleet.tls
        )
        return dict(reply.json())

    def condition(self, hive: str) -> str | None:
        found = [c["type"] for c in self.status()["conditions"] if c["hive"] == hive and c["target"] == f"hive {hive}"]
        return found[0] if found else None


def wait_for(what: str, check: Any, seconds: float) -> Any:
    deadline = time.monotonic() + seconds
    while not (value := check()):
        assert time.monotonic() < deadline, f"{what}: not within {seconds:g} s"
        time.sleep(0.2)
    return value


@given(
    "two SSH test hosts running a hive each, with a queen that listens on all addresses, reconciles every "
    "2 seconds and takes heartbeats every second",
    target_fixture="world",
)
def world(fleet: Fleet, machines: test_hosts.Hosts) -> World:
    state = World(fleet, machines)
    for name in ("node1", "node2"):
        wait_for(f"{name} serving", lambda name=name: state.pids(name, "rbee worker serve"), 45)
    return state


@then(parsers.parse("the queen hears from both hives within {seconds:d} seconds"))
def heartbeats(world: World, seconds: int) -> None:
    ages = wait_for(
        "heartbeats", lambda: (a := world.status()["heartbeats"]).keys() >= {"node1", "node2"} and a, seconds
    )
    assert max(ages.values()) < 2.0, ages


@when(parsers.parse("the hive daemon on {name} is killed with SIGKILL"))
def kill_hive(world: World, name: str) -> None:
    hive, workers = world.pids(name, "rbee hive serve"), world.pids(name, "rbee worker serve")
    assert len(hive) == 1 and len(workers) == 1
    world.before = {"hive": hive, "workers": workers}
    world.host(name).run(f"kill -KILL {hive[0]}")


@then(parsers.parse("{name}'s worker exits within {seconds:d} seconds"))
def worker_exits(world: World, name: str, seconds: int) -> None:
    wait_for("the worker gone", lambda: world.pids(name, "rbee worker serve") != world.before["workers"], seconds)


@then(parsers.parse("the queen restarts {name}'s hive and worker over SSH without any rbee command"))
def restarted(world: World, name: str) -> None:
    fresh = wait_for(f"a new worker on {name}", lambda: world.pids(name, "rbee worker serve"), 45)
    assert fresh != world.before["workers"] and world.pids(name, "rbee hive serve") != world.before["hive"]
    log = world.fleet.rbee("events", "--limit", "200").stdout
    assert f"{name}/hive {name}" in log and "start-hive" in log, log


@when(parsers.parse("{name}'s network link is cut"))
def cut(world: World, name: str) -> None:
    world.before = {"workers": world.pids(name, "rbee worker serve")}
    world.host(name).cut()


@then(parsers.parse("{name} shows Unreachable within {seconds:d} seconds while node1 serves every request"))
def unreachable(world: World, name: str, seconds: int) -> None:
    try:
        wait_for(f"{name} Unreachable", lambda: world.condition(name) == "Unreachable", seconds)
        assert all(route["hive"] == "node1" for route in world.status()["routes"])
        body = {"model": "smollm2", "prompt": "Hi", "max_tokens": 2}
        for _ in range(3):
            answer = httpx.post(
                f"{world.fleet.queen_url}/v1/completions",
                json=body,
                headers=world.fleet.keyed,
                timeout=60,
                verify=world.fleet.tls,
            )
            assert answer.status_code == 200, answer.text
        log = world.fleet.rbee("events", "--limit", "200").stdout
        assert "heartbeats" in log, log
    except BaseException:
        world.host(name).heal()
        raise


@when(parsers.parse("{name}'s network link is restored"))
def heal(world: World, name: str) -> None:
    world.host(name).heal()


@then(parsers.parse("{name} is Ready and routable within {seconds:d} seconds with the worker it had"))
def back(world: World, name: str, seconds: int) -> None:
    wait_for(f"{name} Ready", lambda: world.condition(name) == "Ready", seconds)
    wait_for(f"{name} routable", lambda: any(r["hive"] == name for r in world.status()["routes"]), 15)
    assert world.pids(name, "rbee worker serve") == world.before["workers"]
