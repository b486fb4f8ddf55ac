"""Installing rbee on a machine that has none: apply makes a virtualenv in the hive's data dir and installs
the wheel it builds and uploads, with the dependencies from an uploaded wheelhouse (test hosts reach no index)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import hosts as test_hosts
from tests.fleet import make_fleet

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def machine() -> Iterator[test_hosts.Hosts]:
    with test_hosts.running(1) as made:
        yield made


@pytest.fixture(scope="module")
def wheelhouse(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("wheelhouse")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "-w", str(folder), f"{ROOT}[gguf]"],
        check=True,
        timeout=900,
        capture_output=True,
    )
    return folder


def test_apply_installs_rbee_into_its_own_venv(
    machine: test_hosts.Hosts, wheelhouse: Path, smollm2: Path, tmp_path: Path
) -> None:
    host = machine.hosts[0]
    fleet = make_fleet(tmp_path, f"file://{smollm2}")
    port = fleet.queen_url.rsplit(":", 1)[1]
    fleet.spec.write_text(
        f"queen: {{listen: '127.0.0.1:{port}'}}\nhives:\n  - name: {host.name}\n"
        f"    connection: {{ssh: {{host: {host.address}, user: root, key: '{machine.key}', "
        f"known_hosts: '{machine.known_hosts}'}}}}\n    data_dir: /srv/rbee\n    wheelhouse: '{wheelhouse}'\n"
        f"models:\n  - {{name: smollm2, source: 'file://{smollm2}', idle_timeout: 0}}\n"
        f"workers:\n  - {{model: smollm2, hive: {host.name}}}\n"
    )
    try:
        applied = fleet.rbee("apply", str(fleet.spec), "--yes", timeout=900)
        assert applied.returncode == 0, applied.stdout + applied.stderr
        daemons = [line for line in host.processes() if "rbee hive serve" in line or "rbee worker serve" in line]
        assert len(daemons) == 2 and all(line.startswith("/srv/rbee/venv/bin/python") for line in daemons), daemons
        answer = fleet.rbee("infer", "--model", "smollm2", "Hello", "--max-tokens", "3")
        assert answer.returncode == 0 and "3 tokens" in answer.stderr
        again = fleet.rbee("apply", str(fleet.spec), "--yes")
        assert "No changes." in again.stdout
    finally:
        destroyed = fleet.rbee("destroy", str(fleet.spec), "--yes", "--purge")
    assert destroyed.returncode == 0, destroyed.stdout + destroyed.stderr
    assert list((Path(host.root) / "srv-rbee").iterdir()) == [], "purge removes the venv, wheels and wheelhouse"
