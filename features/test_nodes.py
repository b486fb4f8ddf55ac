"""Step definitions for nodes.feature: the real CLI against two namespace hosts with their own sshd."""

from __future__ import annotations

import json
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from pytest_bdd import given, parsers, scenarios, then, when

from tests import hosts as test_hosts
from tests.fleet import Fleet, make_fleet

pytestmark = pytest.mark.slow
scenarios("nodes.feature")


@pytest.fixture(scope="module")
def machines() -> Iterator[test_hosts.Hosts]:
    with test_hosts.running(2) as made:
        yield made


class World:
    def __init__(self, fleet: Fleet, machines: test_hosts.Hosts, model: Path) -> None:
        self.fleet, self.machines, self.model = fleet, machines, model
        self.nodes: list[str] = []
        self.pids: dict[str, list[str]] = {}
        self.output = ""
        self.result: subprocess.CompletedProcess[str] | None = None
        self.seconds = 0.0

    def host(self, name: str) -> test_hosts.Host:
        return next(host for host in self.machines.hosts if host.name == name)

    def write(self, nodes: list[str]) -> None:
        self.nodes = nodes
        port = self.fleet.queen_url.rsplit(":", 1)[1]
        hives = "".join(
            f"  - name: {name}\n    connection: {{ssh: {{host: {self.host(name).address}, user: root, "
            f"key: '{self.machines.key}', known_hosts: '{self.machines.known_hosts}'}}}}\n"
            f"    python: '{sys.executable}'\n    data_dir: /srv/rbee\n"
            for name in nodes
        )
        workers = "".join(f"  - {{model: smollm2, hive: {name}}}\n" for name in nodes)
        self.fleet.spec.write_text(
            f"queen: {{listen: '127.0.0.1:{port}'}}\nhives:\n{hives}"
            f"models:\n  - {{name: smollm2, source: 'file://{self.model}', idle_timeout: 0}}\n"
            f"workers:\n{workers}"
        )

    def apply(self) -> None:
        result = self.fleet.rbee("apply", str(self.fleet.spec), "--yes")
        assert result.returncode == 0, result.stdout + result.stderr
        self.output = result.stdout

    def rbee_lines(self, name: str) -> list[str]:
        return [line for line in self.host(name).processes() if "rbee" in line and "sshd" not in line]


@pytest.fixture
def world(machines: test_hosts.Hosts, smollm2: Path, tmp_path: Path) -> Iterator[World]:
    state = World(make_fleet(tmp_path, f"file://{smollm2}"), machines, smollm2)
    yield state
    for host in machines.hosts:
        host.heal()  # a scenario may have cut one off
    state.write(["node1", "node2"])
    state.fleet.rbee("destroy", str(state.fleet.spec), "--yes", "--purge")


@given("two SSH test hosts, node1 and node2")
def two_hosts(machines: test_hosts.Hosts) -> None:
    assert [host.name for host in machines.hosts] == ["node1", "node2"]


@given(parsers.parse('a hive.yaml with node1 serving "{model}"'))
def node1_only(world: World, model: str) -> None:
    world.write(["node1"])


@given(parsers.parse('a hive.yaml with node1 and node2 serving "{model}"'))
def both(world: World, model: str) -> None:
    world.write(["node1", "node2"])


@given("rbee apply has run")
@when("I run rbee apply with --yes")
def apply(world: World) -> None:
    world.apply()
    world.pids = {name: worker_pids(world, name) for name in world.nodes}


def worker_pids(world: World, name: str) -> list[str]:
    listing = world.host(name).run("ps -eo pid=,args=").stdout.splitlines()
    return sorted(line.split()[0] for line in listing if "rbee worker serve" in line)


@when(parsers.parse('I add node2 serving "{model}" to hive.yaml and run rbee apply with --yes'))
def add_node2(world: World, model: str) -> None:
    before = dict(world.pids)
    world.write(["node1", "node2"])
    apply(world)
    world.pids = {**world.pids, "before-node1": before["node1"]}


@given("node2 is cut off from the network")
def cut_off(world: World) -> None:
    world.host("node2").cut()


@when(parsers.parse('I add node2 serving "{model}" to hive.yaml and run rbee apply, which fails'))
def add_unreachable(world: World, model: str) -> None:
    before = world.pids["node1"]
    world.write(["node1", "node2"])
    started = time.monotonic()
    world.result = world.fleet.rbee("apply", str(world.fleet.spec), "--yes")
    world.seconds = time.monotonic() - started
    world.pids = {"node1": worker_pids(world, "node1"), "before-node1": before}


@then(
    parsers.parse("rbee exits with 1 within {seconds:d} seconds, naming node2 and that it could not connect over SSH")
)
def unreachable_refused(world: World, seconds: int) -> None:
    result = world.result
    assert result is not None and result.returncode == 1, result
    assert world.seconds < seconds, f"took {world.seconds:.0f} s"
    assert "hive node2" in result.stdout and "could not connect over SSH" in result.stdout, result.stdout


@then("node2 holds no rbee files")
def node2_empty(world: World) -> None:
    assert list((Path(world.host("node2").root) / "srv-rbee").iterdir()) == []


@when("I remove node2 from hive.yaml and run rbee apply with --yes")
def remove_node2(world: World) -> None:
    world.write(["node1"])
    world.apply()


@when("I run rbee status")
def status(world: World) -> None:
    result = world.fleet.rbee("status", "--json")
    assert result.returncode == 0, result.stderr
    world.output = result.stdout


@when("I run rbee destroy with --yes")
def destroy(world: World) -> None:
    result = world.fleet.rbee("destroy", str(world.fleet.spec), "--yes")
    assert result.returncode == 0, result.stdout + result.stderr
    world.output = result.stdout


@then(parsers.parse("{name} runs a hive daemon and {count:d} worker"))
def runs(world: World, name: str, count: int) -> None:
    lines = world.rbee_lines(name)
    assert sum("rbee hive serve" in line for line in lines) == 1, lines
    assert sum("rbee worker serve" in line for line in lines) == count, lines


@then(parsers.parse("{name} holds rbee's config and its own credential only root can read"))
def config_in_place(world: World, name: str) -> None:
    root = Path(world.host(name).root) / "srv-rbee"
    assert json.loads((root / "hive.json").read_text())["name"] == name
    mode = stat.S_IMODE((root / "hive.token").stat().st_mode)
    assert mode == 0o600, oct(mode)
    assert (root / "hive.token").read_text() == world.fleet.credentials().hive(name), "its own, no other hive's"


@then("node1's worker kept its process")
def node1_kept(world: World) -> None:
    assert world.pids["node1"] == world.pids["before-node1"]


@then("it lists node1 and node2 as running with an idle worker each")
def listed(world: World) -> None:
    hives = {hive["name"]: hive for hive in json.loads(world.output)["hives"]}
    assert set(hives) == {"node1", "node2"}
    for hive in hives.values():
        assert hive["status"] == "running"
        assert [worker["state"] for worker in hive["state"]["workers"]] == ["idle"]


@then("node2 runs no rbee process and holds no rbee files")
def node2_gone(world: World) -> None:
    assert world.rbee_lines("node2") == []
    assert list((Path(world.host("node2").root) / "srv-rbee").iterdir()) == []


@then("no rbee process remains on node1 or node2")
def nothing_left(world: World) -> None:
    assert world.rbee_lines("node1") == [] and world.rbee_lines("node2") == []


@then("no queen runs")
def no_queen(world: World) -> None:
    assert "queen stopped" in world.output
    assert world.fleet.ours() == []
