"""The web UI's doors, in process: its files are served with a policy that lets the page load and call nothing
but this queen, hold no data, and the queen takes requests from its own page while still refusing other pages."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from rbee.queen import web_ui
from tests.http.queens import KEYED, OPERATOR
from tests.security.test_queen_doors import queen


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    with queen(tmp_path) as test_client:
        yield test_client


def test_the_page_is_served_without_a_credential_and_with_a_strict_policy(client: TestClient) -> None:
    page = client.get("/ui/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    policy = page.headers["content-security-policy"]
    assert "default-src 'none'" in policy and "connect-src 'self'" in policy and "frame-ancestors 'none'" in policy
    assert page.headers["x-content-type-options"] == "nosniff"
    for name in ("app.js", "api.js", "style.css", "icon.svg"):
        assert client.get(f"/ui/{name}").status_code == 200, name
    assert client.get("/ui/app.js").headers["content-type"].startswith("text/javascript")
    redirect = client.get("/ui", follow_redirects=False)
    assert redirect.status_code == 308 and redirect.headers["location"] == "/ui/"


def test_only_the_uis_own_files_are_served(client: TestClient) -> None:
    for path in ("/ui/../server.py", "/ui/web_ui.py", "/ui/%2e%2e%2fserver.py", "/ui/nothing.js"):
        assert client.get(path).status_code == 404, path
    assert set(web_ui.assets()) == {p.name for p in web_ui.ASSETS.iterdir() if p.suffix in web_ui.TYPES}


def test_a_file_not_changed_is_not_sent_again(client: TestClient) -> None:
    first = client.get("/ui/app.js")
    again = client.get("/ui/app.js", headers={"If-None-Match": first.headers["etag"]})
    assert again.status_code == 304 and again.content == b""


def test_the_queens_own_page_may_call_it_and_other_pages_may_not(client: TestClient) -> None:
    own = {"Origin": "http://127.0.0.1"}
    assert client.get("/v1/models", headers={**KEYED, **own}).status_code == 200
    assert client.get("/v2/status", headers={**OPERATOR, **own}).status_code == 200
    assert client.get("/v1/models", headers={**KEYED, "Origin": "http://127.0.0.1:9999"}).status_code == 403, (
        "another port is another origin"
    )
    assert client.get("/v1/models", headers={**KEYED, "Origin": "https://127.0.0.1"}).status_code == 403, (
        "another scheme is another origin"
    )


def test_the_fleet_pages_need_the_operators_credential(client: TestClient) -> None:
    for path in ("/v2/status?follow=1", "/v2/traffic", "/v2/events?follow=1"):
        assert client.get(path).status_code == 401, path
        assert client.get(path, headers=KEYED).status_code == 401, f"{path}: an API key is not the operator's"


def test_the_followed_status_sends_the_fleet_at_once(client: TestClient) -> None:
    with client.stream("GET", "/v2/status?follow=1", headers=OPERATOR) as stream:
        assert stream.headers["content-type"].startswith("text/event-stream")
        first = next(line for line in stream.iter_lines() if line.startswith("data: "))
    snapshot = json.loads(first.removeprefix("data: "))
    assert snapshot["generation"] == 1 and "routes" in snapshot and "conditions" in snapshot


def test_traffic_is_empty_before_any_request(client: TestClient) -> None:
    answer = client.get("/v2/traffic", headers=OPERATOR).json()
    assert answer["bucket"] == 10 and answer["models"] == {}


def test_the_plan_page_plans_with_the_operators_credential_only(client: TestClient, tmp_path: Path) -> None:
    # its own data_dir, with no rbee in it: the plan does not depend on what this machine's ~/.local/share holds
    hive = f"{{name: local, listen: '127.0.0.1:1', data_dir: '{tmp_path / 'hive'}'}}"
    text = f"hives: [{hive}]\nmodels: [{{name: chat, source: 'file:///m/c.gguf'}}]\n"
    assert client.post("/v2/plan", json={"yaml": text}, headers=KEYED).status_code == 401
    answer = client.post("/v2/plan", json={"yaml": text, "filename": "../../etc/lab.yaml"}, headers=OPERATOR)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["lines"][-1]["text"].startswith("Plan:") and body["spec"]["hives"][0]["name"] == "local"
    assert any(line["symbol"] == "+" and "is not installed" in line["text"] for line in body["lines"]), body["lines"]
    assert body["not_applicable"] is None


def test_a_bad_hive_yaml_is_every_problem_with_its_line(client: TestClient) -> None:
    text = "hives: [{name: local, listen: '127.0.0.1:1'}]\nworkers:\n  - {model: chat, hive: local, replicas: x}\n"
    answer = client.post("/v2/plan", json={"yaml": text, "filename": "lab.yaml"}, headers=OPERATOR)
    assert answer.status_code == 400
    problems = answer.json()["error"]["problems"]
    assert problems and problems[0].startswith("lab.yaml:3:"), problems
    assert client.post("/v2/plan", json={"text": text}, headers=OPERATOR).status_code == 400


def test_a_routing_policy_file_is_planned_but_not_applied_from_a_page(client: TestClient) -> None:
    text = "queen: {routing: route.py}\nhives: [{name: local, listen: '127.0.0.1:1'}]\n"
    answer = client.post("/v2/plan", json={"yaml": text}, headers=OPERATOR).json()
    assert "rbee apply" in answer["not_applicable"]
