"""A highly available queen: two queens on one real PostgreSQL store (started here) in front of a real fleet
(`rbee apply`: hive, llama.cpp worker of SmolLM2). Both serve requests; exactly one leads (holds the lease) and
reconciles; kill -9 the leader and the other leads within the lease, adopting the fleet without restarting its
worker; a command from the old leader's lease generation is refused by the hive (fencing), also after the hive
restarts."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests import postgres
from tests.fleet import Fleet, applied_fleet, make_fleet
from tests.hive_process import TOKEN, hive_daemon
from tests.models import SMOLLM2_SOURCE
from tests.servers import free_port

pytestmark = [pytest.mark.slow, pytest.mark.skipif(postgres.missing() is not None, reason=str(postgres.missing()))]
LEASE = 2.0
CHAT = {"model": "smollm2", "messages": [{"role": "user", "content": "Say hi."}], "max_tokens": 4, "seed": 1}


@pytest.fixture(scope="module")
def server() -> Iterator[postgres.PostgresServer]:
    with postgres.running() as running:
        yield running


def status(url: str, operator: dict[str, str]) -> dict[str, Any]:
    answer: dict[str, Any] = httpx.get(f"{url}/v2/status", headers=operator, timeout=10).json()
    return answer


def wait_for(check: Any, what: str, seconds: float = 30) -> float:
    began = time.monotonic()
    while not check():
        assert time.monotonic() - began < seconds, f"{what} did not happen within {seconds} s"
        time.sleep(0.05)
    return time.monotonic() - began


@contextlib.contextmanager
def second_queen(fleet: Fleet, store: str, port: int) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """Another queen on the same store, with the same credentials (copied as an operator copies RBEE_HOME)."""
    home = fleet.root / "home-b"
    home.mkdir(mode=0o700)
    for name in ("operator.token", "fleet.key", "admin.key"):
        shutil.copy2(fleet.home.root / name, home / name)
    if (fleet.home.root / "tls").exists():
        shutil.copytree(fleet.home.root / "tls", home / "tls")
    command = [sys.executable, "-m", "rbee", "queen", "serve", "--home", str(home), "--listen", f"127.0.0.1:{port}"]
    process = subprocess.Popen(
        [*command, "--store", store],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: _answers(url), "the second queen answering")
        yield url, process
    finally:
        process.kill()
        process.wait(30)


def _answers(url: str) -> bool:
    try:
        return httpx.get(f"{url}/health", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def chat(url: str, fleet: Fleet) -> httpx.Response:
    return httpx.post(f"{url}/v1/chat/completions", json=CHAT, headers=fleet.keyed, timeout=60)


def test_two_queens_one_store_the_leader_killed(tmp_path: Path, server: postgres.PostgresServer) -> None:
    store = server.database("ha")
    port = free_port()
    options = f"store: '{store}', lease: {LEASE}s, peers: ['http://127.0.0.1:{port}']"
    fleet = make_fleet(tmp_path, SMOLLM2_SOURCE, queen=options, reconcile="1s")
    with applied_fleet(fleet), second_queen(fleet, store, port) as (other, _):
        first = fleet.queen_url
        operator = fleet.operator
        wait_for(lambda: status(other, operator)["generation"] == status(first, operator)["generation"], "spec")
        leaders = [status(url, operator)["leadership"] for url in (first, other)]
        assert [leader["this_queen"] for leader in leaders] == [True, False], leaders
        assert leaders[0]["leader"] == leaders[1]["leader"] == leaders[0]["queen"]
        assert chat(first, fleet).status_code == 200
        wait_for(lambda: status(other, operator)["routes"], "the second queen routing to the worker")
        assert chat(other, fleet).status_code == 200, "both serve"
        passes = status(other, operator)["reconcile"]
        assert passes["last"] is None or passes["last"]["skipped"] == "not leading", passes
        shown = fleet.rbee("status")
        assert "Leader: " in shown.stdout and "(this queen, lease generation 1)" in shown.stdout, shown.stdout

        before = httpx.get(f"{fleet.hive_url}/v1/state", headers=fleet.hive_auth()).json()["workers"]
        os.kill(int(str((fleet.home.queen() or {})["pid"])), signal.SIGKILL)
        took = wait_for(lambda: status(other, operator)["leadership"]["this_queen"], "the second queen leading")
        assert took <= LEASE + 1.0 + 1.0, f"took over after {took:.1f} s (lease {LEASE} s, reconcile 1 s)"
        assert status(other, operator)["leadership"]["generation"] == 2
        wait_for(lambda: (status(other, operator)["reconcile"]["last"] or {}).get("skipped") is None, "its pass")
        assert chat(other, fleet).status_code == 200
        through_peer = fleet.rbee("status")  # this RBEE_HOME's own queen is gone: its peer answers
        assert "(this queen, lease generation 2)" in through_peer.stdout, through_peer.stdout + through_peer.stderr
        after = httpx.get(f"{fleet.hive_url}/v1/state", headers=fleet.hive_auth()).json()["workers"]
        assert [(w["id"], w["pid"], w["state"]) for w in after] == [(w["id"], w["pid"], "idle") for w in before], (
            "the new leader adopted the worker as it was"
        )
        events = httpx.get(f"{other}/v2/events", headers=operator).json()["events"]
        assert any(event["kind"] == "leader" and "lease generation 2" in event["message"] for event in events)

        # The new leader commands the hive (a pull, fenced with generation 2); the old one's generation is refused.
        pulled = httpx.post(f"{other}/v2/models/smollm2/pull", json={"hive": "local"}, headers=operator)
        assert pulled.status_code == 202, pulled.text
        wait_for(lambda: Path(fleet.root / "hive" / "fence").exists(), "the hive remembering generation 2")
        stale = httpx.post(
            f"{fleet.hive_url}/v1/workers/{after[0]['id']}/stop",
            headers={**fleet.hive_auth(), "X-Rbee-Fence": "1"},
        )
        assert stale.status_code == 409 and "another queen leads now" in stale.json()["error"]["message"]
        assert (
            httpx.get(f"{fleet.hive_url}/v1/state", headers=fleet.hive_auth()).json()["workers"][0]["state"] == "idle"
        )


def test_fencing_at_the_hive(tmp_path: Path) -> None:
    """A command with a lower lease generation than the hive has obeyed is refused, before it is carried out;
    one without the header (the keeper's) is not fenced; the hive remembers across a restart."""
    with hive_daemon(tmp_path / "hive", "solo") as (client, _):
        assert client.post("/v1/workers/w-9/stop", headers={"X-Rbee-Fence": "5"}).status_code == 404
        refused = client.post("/v1/workers/w-9/stop", headers={"X-Rbee-Fence": "3"})
        assert refused.status_code == 409 and refused.json()["error"]["code"] == "fenced"
        assert "generation 3" in refused.json()["error"]["message"] and "generation 5" in refused.text
        assert client.post("/v1/workers/w-9/stop").status_code == 404, "the keeper's commands are not fenced"
        assert client.post("/v1/workers/w-9/stop", headers={"X-Rbee-Fence": "x"}).status_code == 409
        assert client.get("/v1/state", headers={"X-Rbee-Fence": "1"}).status_code == 200, "reading is not fenced"
    with hive_daemon(tmp_path / "hive", "solo") as (client, _):
        assert client.post("/v1/workers/w-9/stop", headers={"X-Rbee-Fence": "4"}).status_code == 409
        assert client.post("/v1/workers/w-9/stop", headers={"X-Rbee-Fence": "6"}).status_code == 404
    assert TOKEN
