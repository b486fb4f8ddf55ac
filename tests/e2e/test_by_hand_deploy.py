"""A deploy by hand, as an operator runs pyinfra from `rbee inventory`: the inventory names the fleet key's file
and the fleet CA's folder, never a secret; the install derives the hive's credential and issues its certificate
on this machine, so the hive serves TLS that the fleet's CA vouches for; teardown removes it again."""

from __future__ import annotations

import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests import hosts as test_hosts
from tests.fleet import make_fleet

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def machine() -> Iterator[test_hosts.Hosts]:
    with test_hosts.running(1) as made:
        yield made


def test_an_inventory_deploy_serves_tls_from_the_fleet_ca_with_no_secret_in_the_inventory(
    machine: test_hosts.Hosts, tmp_path: Path
) -> None:
    host = machine.hosts[0]
    fleet = make_fleet(tmp_path, "file:///srv/none.gguf")
    fleet.spec.write_text(
        "queen: {listen: '127.0.0.1:8080'}\nhives:\n"
        f"  - name: {host.name}\n"
        f"    connection: {{ssh: {{host: {host.address}, user: root, key: '{machine.key}', "
        f"known_hosts: '{machine.known_hosts}'}}}}\n"
        f"    python: '{sys.executable}'\n    data_dir: /srv/rbee\n"
    )
    made = fleet.rbee("inventory", str(fleet.spec), "--dir", str(tmp_path / "inventory"))
    assert made.returncode == 0, made.stdout + made.stderr
    inventory = next((tmp_path / "inventory").glob("*.py"))
    text = inventory.read_text()
    home = Path(fleet.env["RBEE_HOME"])
    assert "rbee_authority_dir" in text and "PRIVATE KEY" not in text and "BEGIN" not in text
    for secret in (home / "fleet.key", home / "operator.token"):
        assert secret.read_text().strip() not in text, f"{secret.name} is in the inventory"

    def pyinfra(deploy: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "pyinfra", "-y", str(inventory), deploy],
            cwd=ROOT,
            env=fleet.env,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )

    deployed = pyinfra("deploys/hive.py")
    try:
        assert deployed.returncode == 0, deployed.stdout[-3000:] + deployed.stderr[-3000:]
        pinned = ssl.create_default_context(cafile=str(home / "tls" / "ca.pem"))
        deadline = time.monotonic() + 30
        while True:
            try:
                answer = httpx.get(f"https://{host.address}:9200/health", verify=pinned, timeout=5)
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline, host.run("cat /srv/rbee/logs/hive.log").stdout[-2000:]
                time.sleep(0.3)
        assert answer.status_code == 200, answer.text
        with pytest.raises(httpx.TransportError):
            httpx.get(f"http://{host.address}:9200/health", timeout=5)  # plain HTTP gets nothing
        assert host.run("stat -c %a /srv/rbee/tls/hive.key").stdout.strip() == "600"
    finally:
        torn = pyinfra("deploys/teardown.py")
    assert torn.returncode == 0, torn.stdout[-3000:] + torn.stderr[-3000:]
    assert [line for line in host.processes() if "rbee hive serve" in line] == []
