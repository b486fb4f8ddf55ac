"""The queen's data plane with a real worker: exact 429/503/504 with Retry-After, counters back to zero after
refusals, cancels and disconnects, 413, metrics, OpenAPI, and a routing policy file applied and explained."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.fleet import Fleet, make_fleet
from tests.models import SMOLLM2_SOURCE

pytestmark = pytest.mark.slow
KEYS = {"RBEE_TEST_ONE": "key-one", "RBEE_TEST_TWO": "key-two", "RBEE_TEST_THREE": "key-three"}
COUNTING = {"model": "smollm2", "prompt": "1, 2, 3, 4, 5, 6, 7, 8, 9, 10,", "temperature": 0, "stream": True}
POLICY = "def route(request, candidates):\n    return max(candidates, key=lambda c: c['worker'])\n"


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    root = tmp_path_factory.mktemp("dataplane")
    (root / "highest.py").write_text(POLICY)
    queen = (
        "max_queue: 1, queue_timeout: 1s, max_body_bytes: 4096, routing: highest.py, api_keys: ["
        "{env: RBEE_TEST_ONE, max_concurrent: 1}, {env: RBEE_TEST_TWO}, {env: RBEE_TEST_THREE}]"
    )
    # One worker of one slot: a held request fills it, so the queue and its refusals can be counted exactly.
    fleet = make_fleet(root, SMOLLM2_SOURCE, replicas=1, queen=queen, env=KEYS, worker_options="slots: 1")
    applied = fleet.rbee("apply", str(fleet.spec), "--yes")
    assert applied.returncode == 0, applied.stdout + applied.stderr
    yield fleet
    fleet.rbee("destroy", str(fleet.spec), "--yes")


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


class Holder:
    """A long streamed request that holds the only worker until stopped."""

    def __init__(self, fleet: Fleet, key: str, max_tokens: int = 600) -> None:
        self.started = threading.Event()
        self.stop = threading.Event()
        self.status: int | None = None
        self.thread = threading.Thread(target=self.run, args=(fleet, key, max_tokens), daemon=True)

    def run(self, fleet: Fleet, key: str, max_tokens: int) -> None:
        body = {**COUNTING, "max_tokens": max_tokens}
        with httpx.stream(
            "POST", f"{fleet.queen_url}/v1/completions", json=body, headers=auth(key), timeout=60
        ) as response:
            self.status = response.status_code
            for _ in response.iter_lines():
                self.started.set()
                if self.stop.is_set():
                    return

    def __enter__(self) -> Holder:
        self.thread.start()
        assert self.started.wait(30)
        return self

    def __exit__(self, *_: object) -> None:
        self.stop.set()
        self.thread.join(30)


def queen_status(fleet: Fleet) -> dict[str, Any]:
    return httpx.get(f"{fleet.queen_url}/v2/status", headers=fleet.operator).json()


def settled(fleet: Fleet) -> None:
    deadline = time.monotonic() + 10
    while True:
        status = queen_status(fleet)
        if all(route["in_flight"] == 0 for route in status["routes"]) and not any(status["queues"].values()):
            worker = f"{status['routes'][0]['url']}/health"
            if httpx.get(worker).json()["state"] == "idle":
                return
        assert time.monotonic() < deadline, status
        time.sleep(0.05)


def test_refusals_are_exact_and_counters_return_to_zero(fleet: Fleet) -> None:
    with Holder(fleet, KEYS["RBEE_TEST_ONE"]):
        limited = httpx.post(
            f"{fleet.queen_url}/v1/completions", json={**COUNTING, "max_tokens": 5}, headers=auth(KEYS["RBEE_TEST_ONE"])
        )
        assert limited.status_code == 429 and limited.headers["retry-after"] == "1"
        assert limited.json()["error"]["code"] == "key_limit"

        results: dict[str, httpx.Response] = {}

        def queued() -> None:
            results["queued"] = httpx.post(
                f"{fleet.queen_url}/v1/completions",
                timeout=30,
                json={**COUNTING, "max_tokens": 5},
                headers=auth(KEYS["RBEE_TEST_TWO"]),
            )

        waiter = threading.Thread(target=queued)
        waiter.start()
        deadline = time.monotonic() + 5
        while queen_status(fleet)["queues"].get("smollm2", 0) != 1:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        full = httpx.post(
            f"{fleet.queen_url}/v1/completions",
            json={**COUNTING, "max_tokens": 5},
            headers=auth(KEYS["RBEE_TEST_THREE"]),
        )
        assert full.status_code == 503 and full.headers["retry-after"] == "1"
        assert full.json()["error"]["code"] == "queue_full"
        waiter.join(30)
        assert results["queued"].status_code == 504
        assert "retry-after" not in results["queued"].headers
    settled(fleet)
    metrics = httpx.get(f"{fleet.queen_url}/metrics", headers=fleet.keyed).text
    assert 'rbee_admission_refusals{model="smollm2",reason="queue_full"} 1.0' in metrics
    assert 'rbee_admission_refusals{model="smollm2",reason="deadline"} 1.0' in metrics
    assert 'rbee_requests_total{model="smollm2",status="429"} 1.0' in metrics
    assert "rbee_worker_in_flight{" in metrics and 'rbee_queue_depth{model="smollm2"} 0.0' in metrics


def test_a_client_that_disconnects_cancels_the_generation(fleet: Fleet) -> None:
    with httpx.stream(
        "POST",
        f"{fleet.queen_url}/v1/completions",
        json={**COUNTING, "max_tokens": 600},
        headers=auth(KEYS["RBEE_TEST_TWO"]),
        timeout=60,
    ) as response:
        lines = response.iter_lines()
        assert next(line for line in lines if line.startswith("data:"))
    started = time.monotonic()
    settled(fleet)
    assert time.monotonic() - started < 3, "600 tokens would take ~9 s: the worker stopped early"
    log = (fleet.root / "home" / "queen" / "queen.log").read_text()
    assert '"status": 499' in log


def test_deleting_a_task_cancels_it(fleet: Fleet) -> None:
    created = httpx.post(
        f"{fleet.queen_url}/v2/tasks",
        headers=auth(KEYS["RBEE_TEST_TWO"]),
        json={"model": "smollm2", "prompt": COUNTING["prompt"], "max_tokens": 600, "temperature": 0},
    )
    assert created.status_code == 201
    task = created.json()["task_id"]
    time.sleep(0.5)
    assert httpx.delete(f"{fleet.queen_url}/v2/tasks/{task}", headers=auth(KEYS["RBEE_TEST_TWO"])).status_code == 200
    events = httpx.get(f"{fleet.queen_url}/v2/tasks/{task}/events", headers=auth(KEYS["RBEE_TEST_TWO"])).text
    last = [json.loads(line[5:]) for line in events.splitlines() if line.startswith("data:")][-1]
    assert last["finish_reason"] == "cancelled"
    settled(fleet)


def test_client_errors(fleet: Fleet) -> None:
    with (
        openai.OpenAI(base_url=f"{fleet.queen_url}/v1", api_key=KEYS["RBEE_TEST_TWO"], max_retries=0) as client,
        openai.OpenAI(base_url=f"{fleet.queen_url}/v1", api_key="wrong", max_retries=0) as stranger,
    ):
        check_client_errors(fleet, client, stranger)


def check_client_errors(fleet: Fleet, client: openai.OpenAI, stranger: openai.OpenAI) -> None:
    with pytest.raises(openai.AuthenticationError):
        stranger.models.list()
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="ghost", prompt="x")
    with pytest.raises(openai.BadRequestError):
        client.completions.create(model="smollm2", prompt="x", temperature=7)
    huge = httpx.post(
        f"{fleet.queen_url}/v1/completions",
        headers=auth(KEYS["RBEE_TEST_TWO"]),
        json={"model": "smollm2", "prompt": "x" * 10_000},
    )
    assert huge.status_code == 413 and huge.json()["error"]["code"] == "body_too_large"
    assert (
        httpx.post(
            f"{fleet.queen_url}/v1/completions",
            headers={**auth(KEYS["RBEE_TEST_TWO"]), "Content-Type": "application/json"},
            content=b'{"model": ',
        ).status_code
        == 400
    )
    answer = client.completions.create(model="smollm2", prompt="Hello", max_tokens=3)
    assert answer.usage is not None and answer.usage.completion_tokens == 3


def test_openapi_documents_the_api(fleet: Fleet) -> None:
    document = httpx.get(f"{fleet.queen_url}/openapi.json").json()
    assert document["openapi"].startswith("3.")
    assert {"/v1/chat/completions", "/v1/completions", "/v2/tasks", "/v2/tasks/{id}/events"} <= set(document["paths"])
    assert "messages" in document["components"]["schemas"]["ChatRequest"]["properties"]


def test_the_policy_file_routes_and_explains(fleet: Fleet) -> None:
    result = fleet.rbee("route", "--model", "smollm2", "--explain")
    assert result.returncode == 0, result.stderr
    assert "policy: file" in result.stdout
    assert "chosen by highest.py" in result.stdout


def test_a_broken_policy_file_changes_nothing(fleet: Fleet, tmp_path: Path) -> None:
    broken = fleet.spec.read_text().replace("highest.py", "broken.py")
    (fleet.root / "broken.py").write_text("def route(request):\n    return None\n")
    spec = fleet.root / "broken.yaml"
    spec.write_text(broken)
    result = fleet.rbee("apply", str(spec), "--yes")
    assert result.returncode == 1
    assert "queen.routing: broken.py: route must take exactly two arguments" in result.stderr
    assert result.stdout == ""
    assert queen_status(fleet)["generation"] == 1
