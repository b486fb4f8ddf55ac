"""A host that runs systemd (a test host booted with systemd as its PID 1, sshd one of its units): `rbee apply`
installs the hive as a systemd unit, systemd restarts a hive that dies, and `rbee destroy` stops and disables
it (with --purge, removes it)."""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from rbee.infra.systemd import unit_name
from tests import hosts as test_hosts
from tests.fleet import Fleet, make_fleet

pytestmark = pytest.mark.slow

UNIT = unit_name("/srv/rbee")


@pytest.fixture(scope="module")
def machines() -> Iterator[test_hosts.Hosts]:
    with test_hosts.running(1, systemd=True) as made:
        yield made


@pytest.fixture(scope="module")
def host(machines: test_hosts.Hosts) -> test_hosts.Host:
    return machines.hosts[0]


def spec_text(machines: test_hosts.Hosts, model: Path, port: int, service: str = "auto") -> str:
    host = machines.hosts[0]
    return (
        f"queen: {{listen: '127.0.0.1:{port}'}}\n"
        "hives:\n"
        f"  - name: {host.name}\n"
        f"    connection: {{ssh: {{host: {host.address}, user: root, key: '{machines.key}', "
        f"known_hosts: '{machines.known_hosts}'}}}}\n"
        f"    python: '{sys.executable}'\n    data_dir: /srv/rbee\n    service: {service}\n"
        f"models:\n  - {{name: smollm2, source: 'file://{model}', idle_timeout: 0}}\n"
        f"workers:\n  - {{model: smollm2, hive: {host.name}, replicas: 1}}\n"
    )


def reachable_for_others(host: test_hosts.Host) -> Iterator[None]:
    """The hive's Python here is this checkout's venv, whose interpreter may sit under a private home (pyenv in
    /root): the folders above it are made traversable for other users (o+x, no listing) inside the host. Its
    root file system is an overlay of its own, so that stays there; /tmp is this machine's, so a folder changed
    there is changed back afterwards."""
    folders = {
        folder
        for path in (Path(sys.executable), Path(sys.executable).resolve(), Path(__file__).resolve())
        for folder in path.parents
    }
    shared = []
    for folder in sorted(folders):
        mode = folder.stat().st_mode
        if not mode & 0o001:
            assert host.run(f"chmod o+x {folder}").returncode == 0
            if str(folder).startswith(("/tmp/", "/var/tmp/")):
                shared.append((folder, mode & 0o7777))
    try:
        yield
    finally:
        for folder, mode in shared:
            folder.chmod(mode)


@pytest.fixture(scope="module")
def fleet(machines: test_hosts.Hosts, smollm2: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    with contextlib.contextmanager(reachable_for_others)(machines.hosts[0]):
        yield from _applied(machines, smollm2, tmp_path_factory)


def _applied(machines: test_hosts.Hosts, smollm2: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    fleet = make_fleet(tmp_path_factory.mktemp("systemd"), f"file://{smollm2}")
    port = int(fleet.queen_url.rsplit(":", 1)[1])
    # The unit has a private /tmp (PrivateTmp=yes): the model is put where a server keeps its models.
    host = machines.hosts[0]
    copied = host.run(f"mkdir -p /srv/models && cp {smollm2} /srv/models/{smollm2.name}")
    assert copied.returncode == 0, copied.stderr
    fleet.spec.write_text(spec_text(machines, Path("/srv/models") / smollm2.name, port))
    try:  # the queen must go even when apply fails: its loop would go on converging the next module's hosts
        applied = fleet.rbee("apply", str(fleet.spec), "--yes")
        assert applied.returncode == 0, applied.stdout + applied.stderr
        suspended = fleet.rbee("suspend")  # systemd, not the queen, is to restart the hive below
        assert suspended.returncode == 0, suspended.stdout + suspended.stderr
        yield fleet
    finally:
        fleet.rbee("destroy", str(fleet.spec), "--yes", "--purge")


def systemctl(host: test_hosts.Host, *args: str) -> str:
    return host.run(f"systemctl {' '.join(args)} {UNIT} 2>&1").stdout.strip()


def main_pid(host: test_hosts.Host) -> int:
    return int(systemctl(host, "show", "--value", "-p", "MainPID") or 0)


def hive_pids(host: test_hosts.Host) -> list[int]:
    lines = host.run("ps -eo pid=,args=").stdout.splitlines()
    return [int(line.split()[0]) for line in lines if "rbee hive serve" in line]


def test_the_hive_runs_as_an_enabled_systemd_unit_with_its_workers_in_its_cgroup(
    fleet: Fleet, host: test_hosts.Host
) -> None:
    assert systemctl(host, "is-active") == "active"
    assert systemctl(host, "is-enabled") == "enabled"
    assert hive_pids(host) == [main_pid(host)]
    group = systemctl(host, "show", "--value", "-p", "ControlGroup")
    members = {int(pid) for pid in host.run(f"cat /sys/fs/cgroup/systemd{group}/cgroup.procs").stdout.split()}
    workers = [line for line in host.processes() if "rbee worker serve" in line]
    assert len(workers) == 1
    worker_pid = int(host.run("pgrep -f 'rbee worker serve'").stdout.split()[0])
    assert worker_pid in members, "the worker runs inside the hive's unit"
    assert "hive" in host.run("cat /srv/rbee/logs/hive.log").stdout, "the unit appends to the hive's own log"
    answer = httpx.post(
        f"{fleet.queen_url}/v1/completions",
        headers=fleet.keyed,
        timeout=60,
        json={"model": "smollm2", "prompt": "Hello", "max_tokens": 3},
    )
    assert answer.status_code == 200, answer.text


def test_the_hive_and_its_workers_run_as_their_own_user_who_owns_the_state_but_not_the_code(
    host: test_hosts.Host, fleet: Fleet
) -> None:
    users = host.run("ps -eo user=,args= | grep -E 'rbee (hive|worker) serve' | grep -v grep").stdout.splitlines()
    assert len(users) == 2 and all(line.split()[0] == "rbee" for line in users), users
    owners = host.run("stat -c '%U %a %n' /srv/rbee /srv/rbee/hive.token /srv/rbee/hive.db /srv/rbee/logs").stdout
    assert [line.split()[:2] for line in owners.splitlines()] == [
        ["rbee", "700"],
        ["rbee", "600"],
        ["rbee", "600"],
        ["rbee", "755"],  # inside a data dir no one else may enter
    ], owners
    assert host.run("id -u rbee").stdout.strip() != "0"
    shell = host.run("getent passwd rbee | cut -d: -f7").stdout.strip()
    assert shell.endswith("nologin"), shell


def test_the_unit_is_sandboxed(fleet: Fleet, host: test_hosts.Host) -> None:
    """No new privileges, the file system read-only but the data dir, a /tmp of its own; the hive's workers are
    inside the same sandbox."""
    shown = systemctl(host, "show", "-p", "NoNewPrivileges,ProtectSystem,PrivateTmp,ReadWritePaths,UMask")
    # The hive's Python here is this checkout's venv: when the checkout is under /tmp, a private /tmp would hide
    # it, and the unit keeps the host's (tests/unit/test_systemd.py covers both texts).
    private_tmp = "no" if sys.executable.startswith(("/tmp/", "/var/tmp/")) else "yes"
    expected = {"NoNewPrivileges=yes", "ProtectSystem=strict", f"PrivateTmp={private_tmp}", "UMask=0077"}
    assert set(shown.splitlines()) >= {*expected, "ReadWritePaths=/srv/rbee"}, shown
    worker_pid = int(host.run("pgrep -f 'rbee worker serve'").stdout.split()[0])
    for pid in (main_pid(host), worker_pid):
        assert "NoNewPrivs:\t1" in host.run(f"cat /proc/{pid}/status").stdout
        attempt = host.run(f"nsenter -t {pid} -m sh -c 'touch /etc/rbee-was-here' 2>&1")
        assert attempt.returncode != 0 and "Read-only file system" in attempt.stdout, attempt.stdout
        assert (
            host.run(f"nsenter -t {pid} -m sh -c 'touch /srv/rbee/cache-probe && rm /srv/rbee/cache-probe'").returncode
            == 0
        )
    assert host.run("test -e /etc/rbee-was-here").returncode != 0


def test_a_second_apply_changes_nothing(fleet: Fleet) -> None:
    result = fleet.rbee("apply", str(fleet.spec), "--yes")
    assert result.returncode == 0 and "No changes. Live state matches hive.yaml." in result.stdout, result.stdout


def test_systemd_restarts_a_hive_killed_outright(fleet: Fleet, host: test_hosts.Host) -> None:
    before = main_pid(host)
    host.run(f"kill -KILL {before}")
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        now = main_pid(host)
        if now not in (0, before) and systemctl(host, "is-active") == "active" and hive_pids(host) == [now]:
            break
        time.sleep(0.2)
    else:
        raise AssertionError(f"systemd did not restart the hive: {systemctl(host, 'status', '--no-pager')}")


def test_zz_destroy_stops_and_disables_the_unit_and_purge_removes_it(fleet: Fleet, host: test_hosts.Host) -> None:
    result = fleet.rbee("destroy", str(fleet.spec), "--yes")
    assert result.returncode == 0, result.stdout + result.stderr
    assert systemctl(host, "is-active") in ("inactive", "failed")
    assert systemctl(host, "is-enabled") == "disabled"
    assert [line for line in host.processes() if "-m rbee" in line] == [], "no hive or worker is left"
    purged = fleet.rbee("destroy", str(fleet.spec), "--yes", "--purge")
    assert purged.returncode == 0, purged.stdout + purged.stderr
    assert host.run(f"test -e /etc/systemd/system/{UNIT}").returncode == 1
    assert host.run("test -e /srv/rbee/hive.json").returncode == 1
