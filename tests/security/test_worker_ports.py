"""A worker's port after the worker dies: another local user cannot bind it (the hive keeps a guard on it), so a
request the queen still sends there reaches no impostor; it is refused at once, as before. Two hives on one
machine still never share a port."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from rbee.hive import ports
from tests.hive_process import hive_daemon

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux") or os.geteuid() != 0, reason="Linux guards; another user needs root"
)

IMPOSTOR = """
import os, socket, sys
os.setgid(65534); os.setuid(65534)  # nobody: another local user
sock = socket.socket()
sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
try:
    sock.bind(("127.0.0.1", int(sys.argv[1])))
    sock.listen(1)
    print("bound")
except OSError as error:
    print(f"refused: {error}")
"""


def impostor_binds(port: int) -> str:
    return subprocess.run(
        [sys.executable, "-c", IMPOSTOR, str(port)], capture_output=True, text=True, timeout=30, check=True
    ).stdout.strip()


def synthetic_worker(client: httpx.Client, model: Path) -> dict[str, object]:
    assert client.post("/v1/models", json={"name": "smol", "source": f"file://{model}"}).status_code == 200
    started = client.post("/v1/workers", json={"model": "smol", "backend": "synthetic", "replicas": 1})
    assert started.status_code == 202, started.text
    deadline = time.monotonic() + 60
    while (workers := client.get("/v1/state").json()["workers"])[0]["state"] != "idle":
        assert time.monotonic() < deadline, workers
        time.sleep(0.1)
    return dict(workers[0])


def test_a_dead_workers_port_cannot_be_taken_by_another_user_and_refuses_at_once(tmp_path: Path, smollm2: Path) -> None:
    with hive_daemon(tmp_path, "solo", model_dirs=(str(smollm2.parent),)) as (client, _):
        worker = synthetic_worker(client, smollm2)
        port = int(str(worker["port"]))
        assert impostor_binds(port).startswith("refused"), "a live worker's port"
        os.kill(int(str(worker["pid"])), signal.SIGKILL)
        deadline = time.monotonic() + 5
        while client.get("/v1/state").json()["workers"][0]["state"] != "failed":
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert impostor_binds(port).startswith("refused: [Errno 98]"), "a dead worker's port"
        started = time.monotonic()
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=5).close()
        assert time.monotonic() - started < 1, "refused at once, not left to time out"


def test_two_hives_on_one_machine_never_share_a_worker_port(tmp_path: Path, smollm2: Path) -> None:
    dirs = (str(smollm2.parent),)
    with (
        hive_daemon(tmp_path / "a", "a", model_dirs=dirs) as (first, _),
        hive_daemon(tmp_path / "b", "b", model_dirs=dirs) as (second, _),
    ):
        ports_taken = {int(str(synthetic_worker(client, smollm2)["port"])) for client in (first, second)}
        assert len(ports_taken) == 2, ports_taken


def test_a_guard_outlives_its_worker_by_the_grace_and_no_more() -> None:
    reserved = ports.reserve("127.0.0.1", set())
    port = reserved.listener.getsockname()[1]
    reserved.listener.close()  # the worker's copy went with it
    guards = ports.Guards()
    guards.hold(port, reserved.guard)
    guards.sweep({port}, now=0.0)
    guards.sweep(set(), now=100.0)  # its worker left: the grace begins
    guards.sweep(set(), now=100.0 + ports.GUARD_GRACE - 1)
    assert guards.ports() == {port} and impostor_binds(port).startswith("refused")
    guards.sweep(set(), now=100.0 + ports.GUARD_GRACE)
    assert guards.ports() == set() and impostor_binds(port) == "bound"
