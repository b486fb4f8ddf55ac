"""Many machines: three test hosts (network namespaces with their own sshd, addresses, private /srv/rbee and
process tables), driven by the real CLI over real SSH with host keys checked."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests import hosts as test_hosts
from tests.fleet import Fleet, make_fleet

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def machines() -> Iterator[test_hosts.Hosts]:
    with test_hosts.running(3) as made:
        yield made


def spec_text(
    machines: test_hosts.Hosts,
    model: Path,
    replicas: dict[str, int],
    known_hosts: dict[str, Path] | None = None,
    queen_port: int = 0,
) -> str:
    hives, workers = [], []
    for host in machines.hosts:
        if host.name not in replicas:
            continue
        known = (known_hosts or {}).get(host.name, machines.known_hosts)
        hives.append(
            f"  - name: {host.name}\n"
            f"    connection: {{ssh: {{host: {host.address}, user: root, key: '{machines.key}', "
            f"known_hosts: '{known}'}}}}\n"
            f"    python: '{sys.executable}'\n    data_dir: /srv/rbee\n"
        )
        workers.append(f"  - {{model: smollm2, hive: {host.name}, replicas: {replicas[host.name]}}}\n")
    return (
        f"queen: {{listen: '127.0.0.1:{queen_port}'}}\nhives:\n"
        + "".join(hives)
        + f"models:\n  - {{name: smollm2, source: 'file://{model}', idle_timeout: 0}}\nworkers:\n"
        + "".join(workers)
    )


@pytest.fixture(scope="module")
def fleet(machines: test_hosts.Hosts, smollm2: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    fleet = make_fleet(tmp_path_factory.mktemp("ssh"), f"file://{smollm2}")
    port = int(fleet.queen_url.rsplit(":", 1)[1])
    fleet.spec.write_text(spec_text(machines, smollm2, {"node1": 1, "node2": 1, "node3": 1}, queen_port=port))
    try:  # the queen must go even when apply fails: its loop would go on converging the next module's hosts
        applied = fleet.rbee("apply", str(fleet.spec), "--yes")
        assert applied.returncode == 0, applied.stdout + applied.stderr
        # These tests drive the keeper alone (test_ssh_healing.py covers the queen healing hosts by itself): with
        # the loop running, the queen would restart the hive a test stops before the test's own apply could.
        suspended = fleet.rbee("suspend")
        assert suspended.returncode == 0 and "suspended" in suspended.stdout, suspended.stdout + suspended.stderr
        status = json.loads(fleet.rbee("status", "--json").stdout)
        assert status["reconcile"]["suspended"] is True
        yield fleet
    finally:
        fleet.rbee("destroy", str(fleet.spec), "--yes")


def write(fleet: Fleet, name: str, text: str) -> Path:
    path = fleet.root / name
    path.write_text(text)
    return path


def worker_pids(machines: test_hosts.Hosts) -> dict[str, list[str]]:
    return {
        host.name: sorted(
            line.split()[0] for line in host.run("ps -eo pid=,args=").stdout.splitlines() if "rbee worker serve" in line
        )
        for host in machines.hosts
    }


def queen_port(fleet: Fleet) -> int:
    return int(fleet.queen_url.rsplit(":", 1)[1])


def test_every_hive_serves_through_the_queen(fleet: Fleet, machines: test_hosts.Hosts) -> None:
    for host in machines.hosts:
        answer = httpx.post(
            f"{fleet.queen_url}/v1/completions",
            headers={"X-Rbee-Hive": host.name, **fleet.keyed},
            timeout=60,
            json={"model": "smollm2", "prompt": "Hello", "max_tokens": 3},
        )
        assert answer.status_code == 200, answer.text
    log = (fleet.root / "home" / "queen" / "queen.log").read_text()
    served = {json.loads(line.split("INFO ", 1)[1])["hive"] for line in log.splitlines() if "rbee.requests" in line}
    assert served == {"node1", "node2", "node3"}
    for host in machines.hosts:
        assert (Path(host.root) / "srv-rbee" / "hive.json").exists(), "each host has its own /srv/rbee"
        assert any("rbee hive serve" in line for line in host.processes())


def test_a_stolen_hive_credential_opens_that_hive_and_nothing_else(fleet: Fleet, machines: test_hosts.Hosts) -> None:
    """Read off node1's disk as an intruder there would, then tried against everything else on the network."""
    node1, node2 = machines.hosts[0], machines.hosts[1]
    stolen = {"Authorization": f"Bearer {node1.run('cat /srv/rbee/hive.token').stdout.strip()}"}
    with httpx.Client(verify=fleet.tls, timeout=10) as client:
        assert client.get(f"https://{node1.address}:9200/v1/state", headers=stolen).status_code == 200, "its own"
        assert client.get(f"{fleet.queen_url}/v2/status", headers=stolen).status_code == 401, "the operator API"
        assert client.put(f"{fleet.queen_url}/v2/spec", json={"spec": {}}, headers=stolen).status_code == 401
        assert client.get(f"https://{node2.address}:9200/v1/state", headers=stolen).status_code == 401, "another hive"
        assert client.post(f"https://{node2.address}:9200/v1/shutdown", headers=stolen).status_code == 401
        state = client.get(f"https://{node2.address}:9200/v1/state", headers=fleet.hive_auth("node2"))
        theirs = state.json()["workers"][0]
        their_worker = f"https://{node2.address}:{theirs['port']}"
        assert client.get(f"{their_worker}/v1/ready", headers=stolen).status_code == 401, "another hive's worker"
        assert (
            client.get(f"{their_worker}/v1/ready", headers=fleet.worker_auth(theirs["id"], "node2")).status_code == 200
        )
        beat = client.post(
            f"{fleet.queen_url}/v2/hives/node2/heartbeat",
            content=state.text,
            headers={**stolen, "Content-Type": "application/json"},
        )
        assert beat.status_code == 403, "it cannot speak for another hive"
    assert node1.run("cat /srv/rbee/hive.token").stdout.strip() != node2.run("cat /srv/rbee/hive.token").stdout.strip()


def test_hives_and_workers_off_this_machine_speak_only_tls(fleet: Fleet, machines: test_hosts.Hosts) -> None:
    """Plain HTTP to a hive or its worker gets no answer, and a certificate of another CA is not trusted."""
    node1 = machines.hosts[0]
    with httpx.Client(verify=fleet.tls, timeout=10) as client:
        worker = client.get(f"https://{node1.address}:9200/v1/state", headers=fleet.hive_auth("node1")).json()
    for port in (9200, worker["workers"][0]["port"]):
        with pytest.raises(httpx.HTTPError):
            httpx.get(f"http://{node1.address}:{port}/health", timeout=5)
        with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
            httpx.get(f"https://{node1.address}:{port}/health", timeout=5)  # the system's CAs: not ours


def test_rbee_logs_reads_a_remote_hives_and_workers_logs_without_ssh(fleet: Fleet) -> None:
    hive = fleet.rbee("logs", "hive", "node2", "--file", str(fleet.spec))
    assert hive.returncode == 0 and "started w-" in hive.stdout, hive.stdout + hive.stderr
    status = json.loads(fleet.rbee("status", "--json").stdout)
    (node2,) = [h for h in status["hives"] if h["name"] == "node2"]
    worker_id = node2["state"]["workers"][0]["id"]
    worker = fleet.rbee("logs", "worker", worker_id, "--hive", "node2", "--file", str(fleet.spec))
    assert worker.returncode == 0 and f"{worker_id} serves smollm2" in worker.stdout, worker.stdout + worker.stderr


def test_a_second_apply_changes_nothing(fleet: Fleet) -> None:
    result = fleet.rbee("apply", str(fleet.spec), "--yes")
    assert result.returncode == 0 and "No changes. Live state matches hive.yaml." in result.stdout


def test_scaling_one_hive_touches_only_that_host(fleet: Fleet, machines: test_hosts.Hosts, smollm2: Path) -> None:
    before = worker_pids(machines)
    scaled = write(
        fleet,
        "scaled.yaml",
        spec_text(machines, smollm2, {"node1": 1, "node2": 2, "node3": 1}, queen_port=queen_port(fleet)),
    )
    result = fleet.rbee("apply", str(scaled), "--yes")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Apply complete: 1 changes made" in result.stdout
    after = worker_pids(machines)
    assert after["node1"] == before["node1"] and after["node3"] == before["node3"]
    assert len(after["node2"]) == 2 and set(before["node2"]) < set(after["node2"])
    back = fleet.rbee("apply", str(fleet.spec), "--yes")
    assert back.returncode == 0 and len(worker_pids(machines)["node2"]) == 1


def test_a_wrong_host_key_fails_clearly_while_the_others_converge(
    fleet: Fleet, machines: test_hosts.Hosts, smollm2: Path
) -> None:
    node3 = machines.hosts[2]
    httpx.post(f"https://{node3.address}:9200/v1/shutdown", headers=fleet.hive_auth("node3"), verify=fleet.tls)
    deadline = time.monotonic() + 20
    while any("rbee hive serve" in line for line in node3.processes()):
        assert time.monotonic() < deadline
        time.sleep(0.1)
    plan = fleet.rbee("plan", str(fleet.spec))
    assert "~ start     hive node3" in plan.stdout, plan.stdout
    assert "rbee is installed and its daemon is stopped" in plan.stdout
    wrong = fleet.root / "known_hosts_wrong"
    other = machines.known_hosts.read_text().splitlines()[0].split(" ", 1)[1]  # node1's key, for node3
    wrong.write_text(f"{node3.address} {other}\n")
    text = spec_text(machines, smollm2, {"node1": 2, "node2": 1, "node3": 1}, {"node3": wrong}, queen_port(fleet))
    result = fleet.rbee("apply", str(write(fleet, "wrong-key.yaml", text)), "--yes")
    assert result.returncode == 1, result.stdout
    assert "hive node3" in result.stdout and "could not connect over SSH" in result.stdout, result.stdout
    assert "does not match" in result.stdout and "ssh-keygen -R" in result.stdout
    assert len(worker_pids(machines)["node1"]) == 2, "node1 converged anyway"
    healed = fleet.rbee("apply", str(fleet.spec), "--yes")
    assert healed.returncode == 0, healed.stdout + healed.stderr
    assert len(worker_pids(machines)["node3"]) == 1


def test_a_cut_off_host_is_reported_and_routed_around(fleet: Fleet, machines: test_hosts.Hosts) -> None:
    node2 = machines.hosts[1]
    node2.cut()
    try:
        started = time.monotonic()
        plan = fleet.rbee("plan", str(fleet.spec), "--timeout", "2")
        assert time.monotonic() - started < 15, "planning is bounded by the per-hive timeout"
        assert "! wait      hive node2" in plan.stdout and "unreachable" in plan.stdout
        time.sleep(2.5)  # the queen's next look at its hives
        for _ in range(4):
            answer = httpx.post(
                f"{fleet.queen_url}/v1/completions",
                headers=fleet.keyed,
                timeout=60,
                json={"model": "smollm2", "prompt": "Hi", "max_tokens": 2},
            )
            assert answer.status_code == 200, answer.text
    finally:
        node2.heal()
    time.sleep(0.5)
    result = fleet.rbee("apply", str(fleet.spec), "--yes")
    assert result.returncode == 0 and "No changes." in result.stdout


def test_removing_a_hive_uninstalls_it_from_its_host(fleet: Fleet, machines: test_hosts.Hosts, smollm2: Path) -> None:
    node3 = machines.hosts[2]
    two = write(fleet, "two.yaml", spec_text(machines, smollm2, {"node1": 1, "node2": 1}, queen_port=queen_port(fleet)))
    result = fleet.rbee("apply", str(two), "--yes")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "- uninstall hive node3" in result.stdout
    assert not any("rbee" in line and "sshd" not in line for line in node3.processes())
    assert list((Path(node3.root) / "srv-rbee").iterdir()) == []
    back = fleet.rbee("apply", str(fleet.spec), "--yes")
    assert back.returncode == 0, back.stdout + back.stderr


def test_zz_destroy_leaves_no_rbee_process_on_any_host(fleet: Fleet, machines: test_hosts.Hosts) -> None:
    # Another fleet's worker on this machine, under a local hive on the default port: not this fleet's leftover.
    other = ["rbee", "worker", "serve", "--hive-url", "http://127.0.0.1:9200"]
    decoy = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)", *other])
    try:
        result = fleet.rbee("destroy", str(fleet.spec), "--yes")
        assert decoy.poll() is None
    finally:
        decoy.kill()
        decoy.wait()
    assert result.returncode == 0, result.stdout + result.stderr
    for host in machines.hosts:
        assert [line for line in host.processes() if "rbee" in line and "sshd" not in line] == [], host.name
