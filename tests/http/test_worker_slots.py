"""A worker whose engine has several slots serves that many requests at once, refuses one more with 503, and
cancels each by its id without touching the others (the synthetic engine, a real worker app in process)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator

import pytest
from starlette.testclient import TestClient

from rbee.api.state import WorkerState
from rbee.worker.backends.synthetic import RATE, SLOTS, SyntheticBackend
from rbee.worker.server import Runtime, WorkerOptions, create_app

TOKEN = {"Authorization": "Bearer w-token"}


@pytest.fixture
def worker() -> Iterator[tuple[TestClient, Runtime]]:
    engine = SyntheticBackend("/nowhere")
    engine.load(lambda _: None)
    options = WorkerOptions("w-1", "synthetic", "/nowhere", "synthetic", "cpu", "127.0.0.1", 0, None, "w-token")
    runtime = Runtime(options=options, engine=engine, state=WorkerState.IDLE)
    with TestClient(create_app(runtime)) as client:
        yield client, runtime


def stream(client: TestClient, request_id: str, tokens: int, ends: dict[str, tuple[float, dict[str, object]]]) -> None:
    """Read one answer; record when it ended and its last event."""
    body = {"request_id": request_id, "prompt": "x", "max_tokens": tokens}
    with client.stream("POST", "/v1/execute", json=body, headers=TOKEN) as reply:
        last: dict[str, object] = {"status": reply.status_code}
        for line in reply.iter_lines():
            if line.startswith("data:"):
                last = json.loads(line[5:])
    ends[request_id] = (time.monotonic(), last)


def wait_for(condition: object, seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_every_slot_serves_at_once_and_one_more_is_refused(worker: tuple[TestClient, Runtime]) -> None:
    client, runtime = worker
    tokens = 20  # half a second each at RATE
    ends: dict[str, tuple[float, dict[str, object]]] = {}
    started = time.monotonic()
    readers = [threading.Thread(target=stream, args=(client, f"r-{i}", tokens, ends)) for i in range(SLOTS)]
    for reader in readers:
        reader.start()
    wait_for(lambda: len(runtime.active) == SLOTS)
    assert runtime.state is WorkerState.BUSY
    refused = client.post("/v1/execute", json={"request_id": "one-more", "prompt": "x"}, headers=TOKEN)
    assert refused.status_code == 503
    assert f"all {SLOTS} slots" in refused.json()["error"]["message"]
    for reader in readers:
        reader.join(30)
    took = max(at for at, _ in ends.values()) - started
    alone = tokens / RATE
    assert all(last.get("done") and last.get("total_tokens") == tokens for _, last in ends.values()), ends
    assert took < alone * SLOTS / 2, f"{SLOTS} answers of {alone:.2f} s each took {took:.2f} s: not side by side"
    wait_for(lambda: runtime.state is WorkerState.IDLE)
    assert runtime.active == {}


def test_a_cancel_by_id_ends_only_that_request(worker: tuple[TestClient, Runtime]) -> None:
    client, runtime = worker
    ends: dict[str, tuple[float, dict[str, object]]] = {}
    readers = [threading.Thread(target=stream, args=(client, f"r-{i}", 40, ends)) for i in range(3)]
    for reader in readers:
        reader.start()
    wait_for(lambda: len(runtime.active) == 3)
    assert client.post("/v1/cancel", json={"request_id": "r-1"}, headers=TOKEN).json()["cancelled"] is True
    for reader in readers:
        reader.join(30)
    assert ends["r-1"][1].get("finish_reason") == "cancelled"
    assert ends["r-0"][1].get("finish_reason") == ends["r-2"][1].get("finish_reason") == "length"
    assert ends["r-1"][0] < min(ends["r-0"][0], ends["r-2"][0]) - 0.3
    wait_for(lambda: runtime.state is WorkerState.IDLE)


def test_a_request_id_already_running_is_a_conflict(worker: tuple[TestClient, Runtime]) -> None:
    client, runtime = worker
    ends: dict[str, tuple[float, dict[str, object]]] = {}
    reader = threading.Thread(target=stream, args=(client, "same", 20, ends))
    reader.start()
    wait_for(lambda: "same" in runtime.active)
    again = client.post("/v1/execute", json={"request_id": "same", "prompt": "x"}, headers=TOKEN)
    assert again.status_code == 409 and "already running" in again.json()["error"]["message"]
    reader.join(30)
    assert ends["same"][1].get("done") is True
