"""The hive daemon as a real process: workers are real processes too, and they die with their hive."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from rbee.api.state import HiveObservation, HiveState, HiveStatus, ObservedState
from rbee.plan import planner
from rbee.plan.actions import Action
from rbee.spec import load
from tests.fleet import alive
from tests.hive_process import hive_daemon

pytestmark = pytest.mark.slow


@pytest.fixture
def hive(tmp_path: Path, smollm2: Path) -> Iterator[tuple[httpx.Client, subprocess.Popen[bytes]]]:
    with hive_daemon(tmp_path, "solo", model_dirs=(str(smollm2.parent),)) as running:
        yield running


def add_and_start(client: httpx.Client, model_path: Path, replicas: int) -> list[dict[str, object]]:
    added = client.post("/v1/models", json={"name": "smol", "source": f"file://{model_path}"})
    assert added.status_code == 200 and '"done":true' in added.text, added.text
    started = client.post("/v1/workers", json={"model": "smol", "replicas": replicas})
    assert started.status_code == 202, started.text
    deadline = time.monotonic() + 60
    while True:
        workers = client.get("/v1/state").json()["workers"]
        if workers and all(worker["state"] == "idle" for worker in workers):
            return list(workers)
        assert all(worker["state"] != "failed" for worker in workers), workers
        assert time.monotonic() < deadline, workers
        time.sleep(0.1)


def test_killing_the_hive_takes_its_workers_with_it(
    hive: tuple[httpx.Client, subprocess.Popen[bytes]], smollm2: Path
) -> None:
    client, process = hive
    workers = add_and_start(client, smollm2, replicas=2)
    pids = [int(str(worker["pid"])) for worker in workers]
    assert all(alive(pid) for pid in pids)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=10)
    deadline = time.monotonic() + 5
    while any(alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(alive(pid) for pid in pids), "workers outlived their hive by more than 5 s"


def test_shutdown_stops_workers_then_the_hive(
    hive: tuple[httpx.Client, subprocess.Popen[bytes]], smollm2: Path
) -> None:
    client, process = hive
    pids = [int(str(worker["pid"])) for worker in add_and_start(client, smollm2, replicas=1)]
    assert client.post("/v1/shutdown").status_code == 202
    assert process.wait(timeout=30) == 0
    assert not any(alive(pid) for pid in pids)


def test_a_dead_worker_is_reported_failed_with_a_reason(
    hive: tuple[httpx.Client, subprocess.Popen[bytes]], smollm2: Path
) -> None:
    client, _ = hive
    worker = add_and_start(client, smollm2, replicas=1)[0]
    os.kill(int(str(worker["pid"])), signal.SIGKILL)
    deadline = time.monotonic() + 5
    while (state := client.get("/v1/state").json()["workers"][0])["state"] != "failed":
        assert time.monotonic() < deadline, state
        time.sleep(0.05)
    assert "exited with code -9" in state["reason"]


def test_a_frozen_worker_is_killed_and_reported_failed(
    hive: tuple[httpx.Client, subprocess.Popen[bytes]], smollm2: Path
) -> None:
    """Alive but answering nothing (SIGSTOP): its process never exits, so only the hive's probes can tell."""
    client, _ = hive
    worker = add_and_start(client, smollm2, replicas=1)[0]
    pid = int(str(worker["pid"]))
    os.kill(pid, signal.SIGSTOP)
    try:
        deadline = time.monotonic() + 30
        while (state := client.get("/v1/state").json()["workers"][0])["state"] != "failed":
            assert time.monotonic() < deadline, state
            time.sleep(0.2)
        assert "answered no health probe for 12 s (frozen?); killed" in state["reason"]
        deadline = time.monotonic() + 5
        while alive(pid):
            assert time.monotonic() < deadline, "the frozen worker was not killed"
            time.sleep(0.05)
    finally:
        if alive(pid):
            os.kill(pid, signal.SIGCONT)


def test_bad_requests_get_json_errors(hive: tuple[httpx.Client, subprocess.Popen[bytes]]) -> None:
    client, _ = hive
    assert client.post("/v1/workers", json={"model": "ghost"}).json()["error"]["code"] == "not_found"
    assert client.post("/v1/workers", content=b"{nope").status_code == 400
    assert client.post("/v1/workers", json={"model": "x", "replicas": 0}).status_code == 400
    assert httpx.get(f"{client.base_url}/v1/state", trust_env=False).status_code == 401
    wrong = httpx.get(f"{client.base_url}/v1/state", headers={"Authorization": "Bearer nope"}, trust_env=False)
    assert wrong.status_code == 401 and json.loads(wrong.text)["error"]["code"] == "unauthorized"


def test_a_start_never_grows_a_group_past_at_most_and_synthetic_workers_report_their_slots(
    hive: tuple[httpx.Client, subprocess.Popen[bytes]], smollm2: Path
) -> None:
    """The queen's reconcile pass and its cold start may both ask to grow a group from a stale observation; the
    hive takes the difference (`at_most`), so the group never overshoots and nothing is scaled down under load.
    Workers report their slots when ready (synthetic: 8; gguf: 4 unless hive.yaml says), and the hive passes
    them on."""
    client, _ = hive
    assert client.post("/v1/models", json={"name": "smol", "source": f"file://{smollm2}"}).status_code == 200
    group = {"model": "smol", "backend": "synthetic"}
    first = client.post("/v1/workers", json={**group, "replicas": 2, "at_most": 2})
    assert first.status_code == 202 and len(first.json()["workers"]) == 2, first.text
    again = client.post("/v1/workers", json={**group, "replicas": 1, "at_most": 2})
    assert again.status_code == 202 and again.json()["workers"] == [], again.text
    other = client.post("/v1/workers", json={"model": "smol", "replicas": 1, "at_most": 1})  # another group
    assert len(other.json()["workers"]) == 1, other.text
    deadline = time.monotonic() + 60
    while True:
        workers = client.get("/v1/state").json()["workers"]
        if len(workers) == 3 and all(worker["state"] == "idle" for worker in workers):
            break
        assert time.monotonic() < deadline, workers
        time.sleep(0.1)
    slots = sorted((worker["backend"], worker["slots"]) for worker in workers)
    assert slots == [("gguf", 4), ("synthetic", 8), ("synthetic", 8)], slots  # gguf: its default


def test_slots_whose_kv_cache_cannot_fit_are_refused_with_the_numbers(
    hive: tuple[httpx.Client, subprocess.Popen[bytes]], smollm2: Path
) -> None:
    """SmolLM2's header says 30 layers x 3 KV heads x 64+64 dims: 23,040 bytes a token of context in f16. 256
    slots of a million tokens each would need ~6.2 TB; the hive refuses before it starts anything."""
    client, _ = hive
    assert client.post("/v1/models", json={"name": "smol", "source": f"file://{smollm2}"}).status_code == 200
    refused = client.post("/v1/workers", json={"model": "smol", "slots": 256, "context": 1048576})
    assert refused.status_code == 422, refused.text
    message = refused.json()["error"]["message"]
    assert "KV cache of 256 slots x 1048576 tokens" in message and "6.2 TB for a KV cache" in message, message
    assert "lower workers[].slots or context" in message
    assert client.get("/v1/state").json()["workers"] == []


def test_a_plan_from_the_hives_state_shows_what_the_preflight_will_check(
    hive: tuple[httpx.Client, subprocess.Popen[bytes]], smollm2: Path
) -> None:
    """The hive reports each gguf's KV cache cost per token (from its header) and its free memory read now; a
    plan made from that state shows the numbers the preflight above refuses with, before anything starts."""
    client, _ = hive
    assert client.post("/v1/models", json={"name": "smol", "source": f"file://{smollm2}"}).status_code == 200
    state = HiveState.model_validate(client.get("/v1/state").json())
    assert [entry.kv_bytes_per_token for entry in state.catalog] == [23040]
    assert state.host is not None and state.host.devices[0].memory_free > 0
    spec = f"""
hives: [{{name: solo}}]
models: [{{name: smol, source: "file://{smollm2}"}}]
workers:
  - {{model: smol, hive: solo, slots: 2, context: 1024}}
  - {{model: smol, hive: solo, device: cpu, slots: 256, context: 1048576}}
"""
    observed = ObservedState(hives=(HiveObservation(name="solo", status=HiveStatus.RUNNING, state=state),))
    plan = planner.make_plan(load.loads(spec, "hive.yaml"), observed)
    small, huge = [change.reason for change in plan.changes if change.action is Action.START_WORKERS]
    assert "47.2 MB KV cache of 2 slots x 1024 tokens" in small and "free on cpu" in small, small
    assert "does not fit" in huge and "6.2 TB KV cache of 256 slots x 1048576 tokens" in huge, huge
    assert client.get("/v1/state").json()["workers"] == [], "planning started nothing"


def test_workers_get_the_engine_threads_hive_yaml_gives(
    hive: tuple[httpx.Client, subprocess.Popen[bytes]], smollm2: Path
) -> None:
    """workers[].threads reaches each worker (its engine computes on that many threads); 0 is refused."""
    client, _ = hive
    assert client.post("/v1/models", json={"name": "smol", "source": f"file://{smollm2}"}).status_code == 200
    for threads in (1, 2):
        assert client.post("/v1/workers", json={"model": "smol", "threads": threads}).status_code == 202
    deadline = time.monotonic() + 60
    while True:
        workers = client.get("/v1/state").json()["workers"]
        if len(workers) == 2 and all(worker["state"] == "idle" for worker in workers):
            break
        assert time.monotonic() < deadline, workers
        time.sleep(0.1)
    given = set()
    for worker in workers:
        command = Path(f"/proc/{worker['pid']}/cmdline").read_bytes().split(b"\0")
        given.add(int(command[command.index(b"--threads") + 1]))
    assert given == {1, 2}
    refused = client.post("/v1/workers", json={"model": "smol", "threads": 0})
    assert refused.status_code == 400 and "threads" in refused.text, refused.text


def test_a_worker_that_does_not_load_in_its_load_timeout_fails_with_the_setting_named(
    tmp_path: Path, smollm2: Path
) -> None:
    """workers[].load_timeout: a worker still loading when it runs out is failed by its hive, with a sentence
    that names the setting, and its process ends (the synthetic engine takes 30 s to load here)."""
    env = {**os.environ, "RBEE_SYNTHETIC_LOAD_SECONDS": "30"}
    with hive_daemon(tmp_path / "slow", "slow", env=env, model_dirs=(str(smollm2.parent),)) as (client, _):
        assert client.post("/v1/models", json={"name": "smol", "source": f"file://{smollm2}"}).status_code == 200
        body = {"model": "smol", "backend": "synthetic", "replicas": 1, "load_timeout": 2}
        started = client.post("/v1/workers", json=body)
        assert started.status_code == 202, started.text
        deadline = time.monotonic() + 20
        while True:
            (worker,) = client.get("/v1/state").json()["workers"]
            if worker["state"] == "failed":
                break
            assert worker["state"] == "loading" and time.monotonic() < deadline, worker
            time.sleep(0.2)
        assert worker["reason"] == "not ready after 2 s (workers[].load_timeout)", worker
        pid = int(worker["pid"])
        deadline = time.monotonic() + 10
        while alive(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not alive(pid), "the failed worker's process lives on"
