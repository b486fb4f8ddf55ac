"""The queen heals SSH hives by itself: two test hosts send heartbeats over the bridge to a queen that listens
on all addresses; a killed hive is restarted over SSH, and a host cut off for longer than three heartbeats is
routed around, shown Unreachable, and back to Ready when its link returns, with no rbee command run."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests import hosts as test_hosts
from tests.e2e.test_ssh_hives import spec_text
from tests.fleet import Fleet, make_fleet

pytestmark = pytest.mark.slow


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
    applied = fleet.rbee("apply", str(fleet.spec), "--yes")
    assert applied.returncode == 0, applied.stdout + applied.stderr
    yield fleet
    fleet.rbee("destroy", str(fleet.spec), "--yes")


def status(fleet: Fleet) -> dict[str, Any]:
    token = (fleet.root / "home" / "cluster.token").read_text()
    reply = httpx.get(f"{fleet.queen_url}/v2/status", headers={"Authorization": f"Bearer {token}"}, timeout=5)
    return dict(reply.json())


def wait_for(what: str, check: Any, seconds: float) -> Any:
    deadline = time.monotonic() + seconds
    while not (value := check()):
        assert time.monotonic() < deadline, f"{what}: not within {seconds:g} s"
        time.sleep(0.2)
    return value


def condition(fleet: Fleet, target: str) -> dict[str, Any] | None:
    return next((c for c in status(fleet)["conditions"] if c["hive"] + "/" + c["target"] == target), None)


def pids(host: test_hosts.Host, what: str) -> list[str]:
    return [line.split()[0] for line in host.run("ps -eo pid=,args=").stdout.splitlines() if what in line]


def test_hives_on_other_machines_send_heartbeats(fleet: Fleet) -> None:
    ages = wait_for(
        "heartbeats from both hosts", lambda: (a := status(fleet)["heartbeats"]).keys() >= {"node1", "node2"} and a, 15
    )
    assert max(ages.values()) < 2.0, ages


def test_a_killed_hive_is_restarted_over_ssh_with_its_worker(fleet: Fleet, machines: test_hosts.Hosts) -> None:
    node1 = machines.hosts[0]
    hive, workers = pids(node1, "rbee hive serve"), pids(node1, "rbee worker serve")
    assert len(hive) == 1 and len(workers) == 1
    node1.run(f"kill -KILL {hive[0]}")
    wait_for("its worker gone", lambda: pids(node1, "rbee worker serve") != workers, 5)
    fresh = wait_for("a new hive and worker on node1", lambda: pids(node1, "rbee worker serve"), 45)
    assert fresh != workers and pids(node1, "rbee hive serve") != hive
    events = json.dumps(status(fleet)["conditions"])
    assert "node1" in events
    log = fleet.rbee("events", "--limit", "200").stdout
    assert "node1/hive node1" in log and "start-hive" in log, log


def test_a_cut_host_is_routed_around_and_comes_back_by_itself(fleet: Fleet, machines: test_hosts.Hosts) -> None:
    node2 = machines.hosts[1]
    workers = pids(node2, "rbee worker serve")
    node2.cut()
    try:
        wait_for(
            "node2 Unreachable", lambda: (c := condition(fleet, "node2/hive node2")) and c["type"] == "Unreachable", 20
        )
        assert all(route["hive"] == "node1" for route in status(fleet)["routes"])
        for _ in range(3):
            answer = httpx.post(
                f"{fleet.queen_url}/v1/completions",
                json={"model": "smollm2", "prompt": "Hi", "max_tokens": 2},
                timeout=60,
            )
            assert answer.status_code == 200, answer.text
        log = fleet.rbee("events", "--limit", "200").stdout
        assert "node2" in log and "heartbeats" in log, log
    finally:
        node2.heal()
    wait_for("node2 Ready again", lambda: (c := condition(fleet, "node2/hive node2")) and c["type"] == "Ready", 30)
    wait_for("node2 routable again", lambda: any(r["hive"] == "node2" for r in status(fleet)["routes"]), 15)
    assert pids(node2, "rbee worker serve") == workers, "the worker on the cut host kept running"
