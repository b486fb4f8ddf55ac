"""The queen's app in-process: bad requests get 4xx JSON errors in OpenAI's shape, never a 500."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from rbee.queen import daemon
from rbee.queen.server import create_app
from rbee.spec import load
from tests.http.queens import BASE_URL, CREDENTIALS, OPERATOR

SPEC = """
queen:
  api_keys:
    - env: RBEE_TEST_ADMIN_KEY
    - env: RBEE_TEST_CHAT_KEY
      models: [chat]
hives: [{name: local, listen: '127.0.0.1:1'}]
models:
  - {name: chat, source: 'file:///m/chat.gguf'}
  - {name: other, source: 'file:///m/other.gguf'}
workers: [{model: chat, hive: local}, {model: other, hive: local}]
"""
ADMIN = {"Authorization": "Bearer admin-key"}


@pytest.fixture
def client(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[TestClient]:
    monkeypatch.setenv("RBEE_TEST_ADMIN_KEY", "admin-key")
    monkeypatch.setenv("RBEE_TEST_CHAT_KEY", "chat-key")
    queen = daemon.build(tmp_path, CREDENTIALS, queue_wait=0.2)
    queen.fleet.apply(load.loads(SPEC), "test")
    with TestClient(create_app(queen), base_url=BASE_URL, raise_server_exceptions=True) as test_client:
        yield test_client


CHAT = {"model": "chat", "messages": [{"role": "user", "content": "hi"}]}


@pytest.mark.parametrize(
    ("body", "status", "words"),
    [
        (b"{not json", 400, "the body must be a JSON object"),
        ({"model": "chat"}, 400, "messages"),
        ({**CHAT, "max_tokens": 0}, 400, "max_tokens"),
        ({**CHAT, "messages": []}, 400, "messages"),
        ({**CHAT, "n": 9}, 400, "n"),
        ({**CHAT, "max_tokens": 200_000}, 400, "max_tokens"),
        ({**CHAT, "stop": [f"s{i}" for i in range(17)]}, 400, "stop"),
        ({**CHAT, "stop": "x" * 257}, 400, "stop"),
        ({**CHAT, "tools": [{"type": "function", "function": {"name": "f", "parameters": 3}}]}, 400, "tools[0]"),
        (
            {
                **CHAT,
                "tools": [{"type": "function", "function": {"name": "f"}}],
                "response_format": {"type": "json_object"},
            },
            400,
            "cannot be combined",
        ),
        ({**CHAT, "response_format": {"type": "json_schema", "json_schema": {"name": "x"}}}, 400, "json_schema.schema"),
        ({**CHAT, "model": "ghost"}, 404, "the model ghost does not exist; this fleet serves chat, other"),
        (CHAT, 503, "no worker of model chat is ready"),
    ],
)
def test_chat_refusals(client: TestClient, body: object, status: int, words: str) -> None:
    if isinstance(body, bytes):
        response = client.post(
            "/v1/chat/completions", content=body, headers={**ADMIN, "Content-Type": "application/json"}
        )
    else:
        response = client.post("/v1/chat/completions", json=body, headers=ADMIN)
    assert response.status_code == status
    error = response.json()["error"]
    assert words in error["message"]
    assert set(error) == {"message", "type", "param", "code"}
    if status == 503:
        assert response.headers["retry-after"] == "5"


def test_completions_take_one_prompt(client: TestClient) -> None:
    response = client.post("/v1/completions", json={"model": "chat", "prompt": ["a", "b"]}, headers=ADMIN)
    assert response.status_code == 400 and "one prompt per request" in response.json()["error"]["message"]


def test_api_keys_are_required_and_scoped(client: TestClient) -> None:
    assert client.post("/v1/chat/completions", json=CHAT).status_code == 401
    wrong = client.post("/v1/chat/completions", json=CHAT, headers={"Authorization": "Bearer guess"})
    assert wrong.status_code == 401 and wrong.json()["error"]["code"] == "invalid_api_key"
    scoped = {"Authorization": "Bearer chat-key"}
    refused = client.post("/v1/chat/completions", json={**CHAT, "model": "other"}, headers=scoped)
    assert refused.status_code == 403
    assert client.get("/v1/models", headers=scoped).status_code == 200


def test_task_api_validates(client: TestClient) -> None:
    missing = client.post("/v2/tasks", json={"model": "chat"}, headers=ADMIN)
    assert missing.status_code == 400 and "exactly one of 'prompt' or 'messages'" in missing.json()["error"]["message"]
    bad = client.post("/v2/tasks", json={"model": "chat", "prompt": "x", "max_tokens": -1}, headers=ADMIN)
    assert bad.status_code == 400
    assert client.get("/v2/tasks/task-nope/events", headers=ADMIN).status_code == 404


def test_operator_endpoints_need_the_operators_credential(client: TestClient) -> None:
    assert client.put("/v2/spec", json={}, headers=ADMIN).status_code == 401
    assert client.get("/v2/status").status_code == 401
    status = client.get("/v2/status", headers=OPERATOR)
    assert status.status_code == 200 and status.json()["generation"] == 1
    invalid = client.put("/v2/spec", json={"spec": {"hives": "no"}}, headers=OPERATOR)
    assert invalid.status_code == 400


def test_a_spec_that_validate_would_refuse_is_refused_over_the_wire(client: TestClient) -> None:
    """The schema alone accepts it; the cross-section rules do not (a worker of an unknown model, two hives on one
    port), and the applied spec stays as it was."""
    spec = {
        "hives": [{"name": "a"}, {"name": "b"}],
        "models": [],
        "workers": [{"model": "ghost", "hive": "a"}],
    }
    refused = client.put("/v2/spec", json={"spec": spec, "source": "x"}, headers=OPERATOR)
    assert refused.status_code == 400, refused.text
    message = refused.json()["error"]["message"]
    assert "hives.1.listen: hive 'b' would listen on port 9200" in message and "(and 1 more)" in message
    assert client.get("/v2/status", headers=OPERATOR).json()["generation"] == 1


def test_models_lists_served_models(client: TestClient) -> None:
    assert [m["id"] for m in client.get("/v1/models", headers=ADMIN).json()["data"]] == ["chat", "other"]


def test_a_restarted_queen_resumes_its_spec_and_routes(tmp_path: Path) -> None:
    first = daemon.build(tmp_path, CREDENTIALS)
    generation, changed = first.fleet.apply(load.loads(SPEC), "hive.yaml")
    assert (generation, changed) == (1, True)
    assert first.fleet.apply(load.loads(SPEC), "hive.yaml") == (1, False), "the same spec is not a new generation"
    first.store.replace_workers([("local", "w-1", "chat", "http://127.0.0.1:8001")])
    first.store.close()

    second = daemon.build(tmp_path, CREDENTIALS)
    assert second.fleet.generation == 1 and second.fleet.spec is not None
    assert [(r.worker_id, r.model, r.url) for r in second.fleet.registry.routes.values()] == [
        ("w-1", "chat", "http://127.0.0.1:8001")
    ]
    assert [event["message"] for event in second.store.events()] == ["applied generation 1"]
