"""The queen's doors: auth on by default, a key checked before the body is read, browsers refused (Host,
Origin, Content-Type), bounded JSON. Each case here was answered differently before: served, parsed, or a 500."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from rbee.queen import daemon
from rbee.queen.server import create_app
from rbee.spec import load
from tests.http.queens import ADMIN_KEY, BASE_URL, CREDENTIALS, KEYED, admin_key_file

SPEC = """
hives: [{name: local, listen: '127.0.0.1:1'}]
models: [{name: chat, source: 'file:///m/chat.gguf'}]
workers: [{model: chat, hive: local}]
"""
CHAT = {"model": "chat", "messages": [{"role": "user", "content": "hi"}]}


def queen(tmp_path: Path, spec: str = SPEC) -> TestClient:
    built = daemon.build(tmp_path, CREDENTIALS, admin_key_file=admin_key_file(tmp_path), queue_wait=0.1)
    built.fleet.apply(load.loads(spec), "hive.yaml")
    return TestClient(create_app(built), base_url=BASE_URL)


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    with queen(tmp_path) as test_client:
        yield test_client


def test_without_api_keys_in_hive_yaml_a_key_is_still_required(client: TestClient) -> None:
    assert client.get("/v1/models").status_code == 401
    assert client.post("/v1/chat/completions", json=CHAT).status_code == 401
    assert client.post("/v2/tasks", json={"model": "chat", "prompt": "x"}).status_code == 401
    assert client.get("/metrics").status_code == 401
    assert client.get("/v1/models", headers=KEYED).status_code == 200, "the admin key opens it"
    assert client.get("/health").status_code == 200 and client.get("/openapi.json").status_code == 200


def test_auth_none_serves_anyone_on_loopback(tmp_path: Path) -> None:
    with queen(tmp_path, "queen: {auth: none}\n" + SPEC) as open_queen:
        assert open_queen.get("/v1/models").status_code == 200


def test_the_key_is_checked_before_the_body(client: TestClient) -> None:
    anonymous = client.post("/v1/chat/completions", json={"model": "chat", "messages": [{"role": "robot"}]})
    assert anonymous.status_code == 401, "no field-level error for a client without a key"
    assert "role" not in anonymous.text
    huge = client.post("/v1/chat/completions", content=b"[" * 3_000_000, headers={"Content-Type": "application/json"})
    assert huge.status_code == 401


def test_a_rotated_admin_key_stops_working(tmp_path: Path) -> None:
    with queen(tmp_path) as test_client:
        assert test_client.get("/v1/models", headers=KEYED).status_code == 200
        import time

        time.sleep(1.1)  # the queen looks at the key's file once a second
        (tmp_path / "admin.key").write_text("rbk_" + "n" * 40)
        assert test_client.get("/v1/models", headers=KEYED).status_code == 401
        assert test_client.get("/v1/models", headers={"Authorization": "Bearer rbk_" + "n" * 40}).status_code == 200
    assert ADMIN_KEY != "rbk_" + "n" * 40


def test_dns_rebinding_and_cross_site_requests_are_refused(client: TestClient) -> None:
    rebound = client.get("/v1/models", headers={**KEYED, "Host": "attacker.example"})
    assert rebound.status_code == 421 and "attacker.example" in rebound.json()["error"]["message"]
    assert client.get("/v1/models", headers={**KEYED, "Host": "localhost:8080"}).status_code == 200
    assert client.get("/v1/models", headers={**KEYED, "Host": "10.0.0.5:8080"}).status_code == 200
    simple = client.post(
        "/v2/tasks", content=b'{"model": "chat", "prompt": "x"}', headers={**KEYED, "Content-Type": "text/plain"}
    )
    assert simple.status_code == 415
    from_page = client.get("/v1/models", headers={**KEYED, "Origin": "http://attacker.example"})
    assert from_page.status_code == 403


def test_allowed_hosts_and_origins_are_configured_in_hive_yaml(tmp_path: Path) -> None:
    spec = "queen: {allowed_hosts: [queen.lab], cors_origins: ['http://dash.lab']}\n" + SPEC
    with queen(tmp_path, spec) as configured:
        assert configured.get("/v1/models", headers={**KEYED, "Host": "queen.lab"}).status_code == 200
        assert configured.get("/v1/models", headers={**KEYED, "Origin": "http://dash.lab"}).status_code == 200


def test_deeply_nested_json_is_a_400(client: TestClient) -> None:
    json_type = {**KEYED, "Content-Type": "application/json"}
    deep = client.post("/v1/chat/completions", content=b"[" * 5000 + b"]" * 5000, headers=json_type)
    assert deep.status_code == 400 and deep.json()["error"]["code"] in ("too_deep", "invalid_json")
    sixty_five = b'{"a":' * 65 + b"1" + b"}" * 65
    assert client.post("/v1/chat/completions", content=sixty_five, headers=json_type).json()["error"]["code"] == (
        "too_deep"
    )
