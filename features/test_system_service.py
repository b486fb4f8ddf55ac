"""Step definitions for system_service.feature: the systemd test host and applied fleet of
tests/e2e/test_systemd_hive.py (its fixtures, one boot per module)."""

from __future__ import annotations

import httpx
import pytest
from pytest_bdd import given, scenarios, then, when

from tests import hosts as test_hosts
from tests.e2e.test_systemd_hive import fleet, hive_pids, host, machines, main_pid, systemctl
from tests.fleet import Fleet

pytestmark = pytest.mark.slow
scenarios("system_service.feature")
__all__ = ["fleet", "host", "machines"]  # the fixtures this module uses, from the e2e module


@given("a machine that runs systemd, reached over SSH as root")
def a_systemd_machine(host: test_hosts.Host) -> None:
    assert host.run("cat /proc/1/comm").stdout.strip() == "systemd"


@when("rbee apply has installed a hive there with data_dir /srv/rbee")
def installed(fleet: Fleet) -> None:
    assert "/srv/rbee" in fleet.spec.read_text()


@then("the hive runs as an enabled system unit, its main process the hive daemon")
def unit(host: test_hosts.Host) -> None:
    assert (systemctl(host, "is-active"), systemctl(host, "is-enabled")) == ("active", "enabled")
    assert hive_pids(host) == [main_pid(host)]


@then("the hive and its worker run as the user rbee, who owns /srv/rbee and is not root")
def own_user(host: test_hosts.Host) -> None:
    users = host.run("ps -eo user=,args= | grep -E 'rbee (hive|worker) serve' | grep -v grep").stdout.splitlines()
    assert len(users) == 2 and all(line.split()[0] == "rbee" for line in users), users
    assert host.run("stat -c %U /srv/rbee").stdout.strip() == "rbee"
    assert host.run("id -u rbee").stdout.strip() != "0"


@then("the fleet answers through the queen")
def answers(fleet: Fleet) -> None:
    body = {"model": "smollm2", "prompt": "Hello", "max_tokens": 3}
    answer = httpx.post(f"{fleet.queen_url}/v1/completions", headers=fleet.keyed, timeout=60, json=body)
    assert answer.status_code == 200, answer.text
