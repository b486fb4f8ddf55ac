"""Queens on loopback for the federation tests and bench: each a real `rbee queen serve` process (started the way
`rbee apply` starts one) over its own RBEE_HOME, with a synthetic hive (bench/loads/synthetic_worker.py: tokens at
a fixed rate, a stand-in for a model's cost) as its local fleet. A provider queen is one of these; the platform
queen is one too, with the others as its providers."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from rbee.clients import tls
from rbee.clients.queen import QueenClient
from rbee.keeper import queen_process
from rbee.keeper.home import Home
from rbee.spec.schema import HiveFile
from tests.servers import free_port

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class RunningQueen:
    name: str
    home: Home
    url: str
    key: str
    """Its admin API key: what a client (or a platform) sends it."""
    client: QueenClient
    spec: HiveFile
    synthetic: subprocess.Popen[bytes] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def keyed(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}

    @property
    def operator(self) -> dict[str, str]:
        credentials = self.home.credentials(create=False)
        assert credentials is not None
        return {"Authorization": f"Bearer {credentials.operator}"}

    @property
    def pid(self) -> int:
        return int(str((self.home.queen() or {})["pid"]))

    def kill(self) -> None:
        """kill -9 the queen (its synthetic hive lives on)."""
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while self.client.answers() and time.monotonic() < deadline:
            time.sleep(0.05)

    def start(self) -> None:
        """(Again) start its queen, with its spec: as `rbee apply` does, from a process of its own (the queen
        outlives it, as it outlives the keeper)."""
        spec_file = self.home.root / "spec.json"
        spec_file.write_text(self.spec.model_dump_json())
        command = [sys.executable, "-m", "tests.federation", str(self.home.root), str(spec_file)]
        subprocess.run(command, check=True, timeout=60, cwd=ROOT)
        credentials = self.home.credentials(create=False)
        assert credentials is not None
        self.client = QueenClient(self.url, credentials.operator)

    def stop_queen(self) -> None:
        """Stop the queen (its synthetic hive lives on)."""
        queen_process.stop(self.home)

    def stop(self) -> None:
        queen_process.stop(self.home)
        if self.synthetic is not None:
            self.synthetic.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.synthetic.wait(10)


def start_synthetic(
    port: int, workers: int, slots: int, rate: float, tls_files: tuple[str, str] | None = None
) -> subprocess.Popen[bytes]:
    """bench/loads/synthetic_worker.py on `port` (serving TLS with `tls_files`), once it answers."""
    serving_tls = ["--tls-cert", tls_files[0], "--tls-key", tls_files[1]] if tls_files else []
    process = subprocess.Popen(
        [
            sys.executable,
            str(ROOT / "bench" / "loads" / "synthetic_worker.py"),
            "--port",
            str(port),
            "--workers",
            str(workers),
            "--slots",
            str(slots),
            "--rate",
            str(rate),
            *serving_tls,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"{'https' if tls_files else 'http'}://127.0.0.1:{port}/health"
    deadline = time.monotonic() + 30
    while True:
        try:
            if httpx.get(url, timeout=1, trust_env=False, verify=tls.context()).status_code == 200:
                return process
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline or process.poll() is not None:
            process.kill()
            raise RuntimeError("the synthetic hive did not come up")
        time.sleep(0.05)


def start_queen(
    root: Path,
    name: str,
    *,
    replicas: int = 1,
    slots: int = 8,
    rate: float = 200.0,
    providers: list[dict[str, Any]] | None = None,
    queen: dict[str, Any] | None = None,
) -> RunningQueen:
    """A queen named `name` whose own fleet is a synthetic hive of `replicas` workers of model `synthetic`
    (0: none; the model is then the providers' alone)."""
    home = Home(root / name)
    credentials, key = home.credentials(create=True), home.admin_key(create=True)
    assert credentials is not None and key is not None
    hive_port, queen_port = free_port(), free_port()
    synthetic = start_synthetic(hive_port, max(replicas, 1), slots, rate)
    spec = HiveFile.model_validate(
        {
            "queen": {"listen": f"127.0.0.1:{queen_port}", "queue_timeout": 10, **(queen or {})},
            "hives": [{"name": "synthetic", "listen": f"127.0.0.1:{hive_port}"}],
            "models": [{"name": "synthetic", "source": "file:///synthetic.gguf", "idle_timeout": 0}],
            "workers": [{"model": "synthetic", "hive": "synthetic", "replicas": replicas}],
            "providers": providers or [],
        }
    )
    running = RunningQueen(
        name, home, f"http://127.0.0.1:{queen_port}", key, QueenClient(f"http://127.0.0.1:{queen_port}", None), spec
    )
    running.synthetic = synthetic
    try:
        running.start()
        if replicas:
            deadline = time.monotonic() + 20
            while len(running.client.status()["routes"]) < replicas:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"queen {name} found no synthetic worker")
                time.sleep(0.05)
    except BaseException:
        running.stop()
        raise
    return running


def as_provider(queen: RunningQueen, key_env: str, **fields: Any) -> dict[str, Any]:
    """hive.yaml's entry for `queen` as an rbee provider, its key in `key_env` (set in this process's
    environment, which a queen started now inherits)."""
    os.environ[key_env] = queen.key
    return {"name": queen.name, "endpoint": f"{queen.url}/v1", "kind": "rbee", "api_key": {"env": key_env}, **fields}


def _start(home: Path, spec_file: Path) -> None:
    """Start the queen of `home` with the spec in `spec_file`, its reconcile loop suspended: the synthetic hive
    is a stand-in, and nothing is to be installed in its place."""
    spec = HiveFile.model_validate_json(spec_file.read_text())
    keeper = Home(home)
    credentials = keeper.credentials(create=True)
    assert credentials is not None
    client, _ = queen_process.ensure_running(spec, keeper, credentials.operator)
    client.set_suspended(True)
    client.push_spec(spec, "tests", None)


if __name__ == "__main__":
    _start(Path(sys.argv[1]), Path(sys.argv[2]))
