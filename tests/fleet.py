"""A real local fleet for tests: hive.yaml on free ports in a temp dir, applied and destroyed by the real CLI."""

from __future__ import annotations

import contextlib
import os
import ssl
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from rbee.api.credentials import FleetCredentials
from rbee.keeper import processes
from rbee.keeper.home import Home
from tests.servers import free_port


@dataclass
class Fleet:
    root: Path
    spec: Path
    queen_url: str
    hive_url: str
    env: dict[str, str]
    applied: str = ""
    """What the first `rbee apply` printed, for tests that read it."""

    def rbee(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "rbee", *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=self.env,
            stdin=subprocess.DEVNULL,
        )

    @property
    def home(self) -> Home:
        return Home(self.root / "home")

    def credentials(self) -> FleetCredentials:
        found = self.home.credentials(create=False)
        assert found is not None, "the fleet was never applied"
        return found

    @property
    def operator(self) -> dict[str, str]:
        """Headers for the queen's operator API."""
        return {"Authorization": f"Bearer {self.credentials().operator}"}

    def hive_auth(self, hive: str = "local") -> dict[str, str]:
        """Headers for a hive's API (its own credential)."""
        return {"Authorization": f"Bearer {self.credentials().hive(hive)}"}

    def worker_auth(self, worker_id: str, hive: str = "local") -> dict[str, str]:
        return {"Authorization": f"Bearer {self.credentials().worker(hive, worker_id)}"}

    @property
    def api_key(self) -> str:
        """The admin API key `rbee apply` made."""
        key = self.home.admin_key(create=False)
        assert key is not None, "the fleet was never applied"
        return key

    @property
    def tls(self) -> ssl.SSLContext:
        """Trusts this fleet's CA only: for calling its hives and workers off this machine over https."""
        context = ssl.create_default_context(cafile=str(self.home.authority.ca_file))
        return context

    @property
    def keyed(self) -> dict[str, str]:
        """Headers for the queen's client API."""
        return {"Authorization": f"Bearer {self.api_key}"}

    def ours(self) -> list[tuple[int, str]]:
        """rbee processes that belong to this fleet (other fleets may run beside it)."""
        return processes.rbee_processes((str(self.root), self.hive_url))


def make_fleet(
    root: Path,
    source: str,
    replicas: int = 1,
    model: str = "smollm2",
    queen: str = "",
    env: dict[str, str] | None = None,
    model_options: str = "idle_timeout: 0",
    worker_options: str = "",
    reconcile: str = "5s",
) -> Fleet:
    """A one-hive fleet. Its workers never idle out unless `model_options` says otherwise, so tests that count
    processes see the same ones throughout."""
    queen_port, hive_port = free_port(), free_port()
    spec = root / "hive.yaml"
    extra = f", {worker_options}" if worker_options else ""
    spec.write_text(
        f"queen: {{listen: '127.0.0.1:{queen_port}', reconcile_interval: {reconcile}{', ' + queen if queen else ''}}}\n"
        f"hives:\n  - {{name: local, listen: '127.0.0.1:{hive_port}', data_dir: '{root / 'hive'}'}}\n"
        f"models:\n  - {{name: {model}, source: '{source}', {model_options}}}\n"
        f"workers:\n  - {{model: {model}, hive: local, replicas: {replicas}{extra}}}\n"
    )
    full_env = {**os.environ, "RBEE_HOME": str(root / "home"), "NO_COLOR": "1", **(env or {})}
    if not env or "RBEE_API_KEY" not in env:
        full_env.pop("RBEE_API_KEY", None)
    return Fleet(root, spec, f"http://127.0.0.1:{queen_port}", f"http://127.0.0.1:{hive_port}", full_env)


def alive(pid: int) -> bool:
    """Whether a process runs (a zombie does not count)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return ") Z " not in stat.read()
    except OSError:
        return False


@contextlib.contextmanager
def applied_fleet(fleet: Fleet) -> Iterator[Fleet]:
    """The fleet applied by the real `rbee apply` (its output kept in `fleet.applied`), destroyed after."""
    result = fleet.rbee("apply", str(fleet.spec), "--yes")
    assert result.returncode == 0, result.stdout + result.stderr
    fleet.applied = result.stdout
    try:
        yield fleet
    finally:
        fleet.rbee("destroy", str(fleet.spec), "--yes")
