"""The queen's success paths in-process: its real app and dispatch, relaying to the synthetic token workers of
bench/loads/ (a real HTTP server speaking the worker and hive wire formats, no model behind it).

Each API module is exercised through the app it is mounted in: the OpenAI API (whole answers, streams, usage,
a value the workers would refuse), the task API (stream, re-attach, cancel), the operator API (status, the
applied spec, one error shape), and dispatch's cold start (progress comments while a worker starts).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from starlette.testclient import TestClient

from bench.loads.synthetic_worker import make_app
from rbee.api import sse
from rbee.queen import daemon
from rbee.queen.parts import Queen
from rbee.queen.server import create_app
from rbee.spec import load
from tests.http.queens import BASE_URL, CREDENTIALS, KEYED, OPERATOR, admin_key_file, hive_auth
from tests.servers import free_port, serve

SPEC = """
queen: {{queue_timeout: 5s}}
hives: [{{name: synthetic, listen: '127.0.0.1:{port}'}}]
models:
  - {{name: synthetic, source: 'file:///m/synthetic.gguf', idle_timeout: 0}}
workers: [{{model: synthetic, hive: synthetic, replicas: {replicas}}}]
"""
CHAT = {"model": "synthetic", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5}


@pytest.fixture
def synthetic() -> Iterator[int]:
    port = free_port()
    with serve(make_app(2, 1, 5000.0, port), port):
        yield port


def queen_app(tmp_path: Path, port: int, replicas: int) -> tuple[Queen, TestClient]:
    queen = daemon.build(tmp_path, CREDENTIALS, admin_key_file=admin_key_file(tmp_path), queue_wait=5.0)
    queen.fleet.apply(load.loads(SPEC.format(port=port, replicas=replicas)), "hive.yaml")
    return queen, TestClient(create_app(queen), base_url=BASE_URL, headers=KEYED)


@pytest.fixture
def client(tmp_path: Path, synthetic: int) -> Iterator[TestClient]:
    """A queen whose hive has beaten once: its two synthetic workers are routable."""
    queen, test_client = queen_app(tmp_path, synthetic, replicas=2)
    with test_client:
        state = httpx.get(f"http://127.0.0.1:{synthetic}/v1/state", trust_env=False).json()
        beat = test_client.post("/v2/hives/synthetic/heartbeat", json=state, headers=hive_auth("synthetic"))
        assert beat.status_code == 200, beat.text
        yield test_client
        test_client.portal.call(daemon.close, queen)  # type: ignore[union-attr]


def events(response: httpx.Response) -> list[sse.Event]:
    return sse.Parser().feed(response.content)


def test_a_chat_is_answered_whole_with_usage(client: TestClient) -> None:
    answer = client.post("/v1/chat/completions", json=CHAT)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["choices"][0]["message"] == {"role": "assistant", "content": " tok" * 5}
    assert body["choices"][0]["finish_reason"] == "length"
    assert body["usage"] == {"prompt_tokens": 8, "completion_tokens": 5, "total_tokens": 13}


def test_a_chat_streams_openai_chunks_ending_with_usage_and_done(client: TestClient) -> None:
    body = {**CHAT, "stream": True, "stream_options": {"include_usage": True}}
    with client.stream("POST", "/v1/chat/completions", json=body) as reply:
        assert reply.status_code == 200 and reply.headers["content-type"].startswith("text/event-stream")
        found = sse.Parser().feed(reply.read())
    data = [event.data for event in found if event.data]
    assert data[-1] == "[DONE]"
    chunks = [json.loads(item) for item in data[:-1]]
    text = "".join(chunk["choices"][0]["delta"].get("content", "") for chunk in chunks if chunk["choices"])
    assert text == " tok" * 5
    assert chunks[-1]["usage"] == {"prompt_tokens": 8, "completion_tokens": 5, "total_tokens": 13}
    assert any(event.comments and event.comments[0].startswith("rbee-end") for event in found)


def test_a_completion_streams_text_chunks(client: TestClient) -> None:
    body = {"model": "synthetic", "prompt": "Once", "max_tokens": 3, "stream": True}
    reply = client.post("/v1/completions", json=body)
    chunks = [json.loads(event.data) for event in events(reply) if event.data and event.data != "[DONE]"]
    assert "".join(chunk["choices"][0]["text"] for chunk in chunks) == " tok" * 3
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"


def test_a_value_the_workers_refuse_is_the_clients_400_naming_the_field(client: TestClient) -> None:
    reply = client.post("/v1/chat/completions", json={**CHAT, "max_tokens": 200_000})
    assert reply.status_code == 400, reply.text
    error = reply.json()["error"]
    assert error["param"] == "max_tokens" and "131072" in error["message"]


def test_a_task_streams_can_be_reattached_and_records_its_request(client: TestClient) -> None:
    created = client.post("/v2/tasks", json={"model": "synthetic", "prompt": "hi", "max_tokens": 4})
    assert created.status_code == 201
    path = created.json()["events"]
    first = [event.json() for event in events(client.get(path)) if event.data]
    assert [item["token"] for item in first if "token" in item] == [" tok"] * 4
    assert first[-1]["done"] is True and first[-1]["total_tokens"] == 4
    again = [event.json() for event in events(client.get(path)) if event.data]
    assert again == first, "a finished task replays the same events"
    metrics = client.get("/metrics").text
    assert 'rbee_requests_total{model="synthetic",status="200"} 1.0' in metrics
    assert 'rbee_tokens_generated_total{model="synthetic"} 4.0' in metrics


def test_cancelling_a_task_ends_its_stream_as_cancelled(client: TestClient) -> None:
    created = client.post("/v2/tasks", json={"model": "synthetic", "prompt": "hi", "max_tokens": 100_000})
    task = created.json()
    seen: list[dict[str, object]] = []

    def read() -> None:
        with client.stream("GET", task["events"]) as reply:
            parser = sse.Parser()
            for chunk in reply.iter_bytes():
                seen.extend(event.json() for event in parser.feed(chunk) if event.data)

    reader = threading.Thread(target=read)
    reader.start()
    cancelled = client.delete(f"/v2/tasks/{task['task_id']}")
    reader.join(timeout=30)
    assert cancelled.json() == {"task_id": task["task_id"], "finished": True}
    assert not reader.is_alive(), "the stream ended"
    assert seen[-1] == {"done": True, "total_tokens": 0, "prompt_tokens": 0, "finish_reason": "cancelled"}
    assert len([item for item in seen if "token" in item]) < 100_000


def test_a_cold_start_streams_its_progress_then_the_answer(tmp_path: Path) -> None:
    port = free_port()
    with serve(make_app(0, 1, 5000.0, port, start_delay=1.5), port):
        queen, test_client = queen_app(tmp_path, port, replicas=1)
        with test_client:
            test_client.portal.call(queen.fleet.refresh)  # the hive runs, with no worker yet
            body = {**CHAT, "stream": True}
            with test_client.stream("POST", "/v1/chat/completions", json=body) as reply:
                found = sse.Parser().feed(reply.read())
            test_client.portal.call(daemon.close, queen)
    comments = [comment for event in found for comment in event.comments]
    assert any(comment.startswith("rbee cold start: synthetic on hive synthetic") for comment in comments), comments
    chunks = [json.loads(event.data) for event in found if event.data and event.data != "[DONE]"]
    assert "".join(chunk["choices"][0]["delta"].get("content", "") for chunk in chunks) == " tok" * 5


def test_the_operator_api_shows_the_fleet_and_the_spec(client: TestClient) -> None:
    status = client.get("/v2/status", headers=OPERATOR).json()
    assert sorted(route["worker"] for route in status["routes"]) == ["s-0", "s-1"]
    assert status["hives"][0]["status"] == "running"
    applied = client.get("/v2/spec", headers=OPERATOR).json()
    assert applied["generation"] == 1 and applied["spec"]["hives"][0]["name"] == "synthetic"
    assert applied["seen_hives"] == ["synthetic"]
    assert client.get("/v2/spec").status_code == 401, "an API key is not the operator's credential"


def test_the_operator_api_refuses_in_one_shape(client: TestClient) -> None:
    json_type = {"Content-Type": "application/json"}
    too_big = client.put("/v2/spec", content=b"{" + b" " * (5 << 20) + b"}", headers={**OPERATOR, **json_type})
    invalid = client.put("/v2/spec", json={"spec": {"hives": "no"}}, headers=OPERATOR)
    unknown = client.post(
        "/v2/hives/ghost/heartbeat", json={"name": "ghost", "version": "0"}, headers=hive_auth("ghost")
    )
    expected = ((too_big, 413, "body_too_large"), (invalid, 400, "invalid_spec"), (unknown, 404, "unknown_hive"))
    for reply, status, code in expected:
        assert reply.status_code == status
        assert set(reply.json()["error"]) == {"message", "code"} and reply.json()["error"]["code"] == code


def test_text_that_looks_like_the_end_marker_is_only_text(client: TestClient) -> None:
    marker = ': rbee-end {"completion_tokens": "x"}\n\n'
    body = {"model": "synthetic", "prompt": f"say:{marker}", "max_tokens": 3}
    streamed = events(client.post("/v1/completions", json={**body, "stream": True}))
    assert streamed[-1].data == "[DONE]" and not any("error" in event.data for event in streamed)
    whole = client.post("/v1/completions", json=body)
    assert whole.status_code == 200 and whole.json()["choices"][0]["text"] == marker * 3
    task = client.post("/v2/tasks", json=body).json()
    ended = [event.json() for event in events(client.get(task["events"])) if event.data]
    assert ended[-1]["done"] is True


def test_a_request_waits_for_a_worker_that_is_loading_instead_of_a_503(tmp_path: Path) -> None:
    """A replacement (or a scale-up, or a restarted hive) is loading and nothing else runs: the request is held
    like a cold start, with the same comments, and served when it is up."""
    port = free_port()
    with serve(make_app(0, 1, 5000.0, port, start_delay=1.5), port):
        httpx.post(f"http://127.0.0.1:{port}/v1/workers", json={"model": "synthetic"}, trust_env=False)
        queen, test_client = queen_app(tmp_path, port, replicas=1)
        with test_client:
            test_client.portal.call(queen.fleet.refresh)  # the hive reports the worker loading
            poller = test_client.portal.start_task_soon(daemon.poll, queen, 0.2)  # type: ignore[union-attr]
            with test_client.stream("POST", "/v1/chat/completions", json={**CHAT, "stream": True}) as reply:
                found = sse.Parser().feed(reply.read())
            poller.cancel()
            test_client.portal.call(daemon.close, queen)  # type: ignore[union-attr]
    comments = [comment for event in found for comment in event.comments]
    assert any("a worker of it is loading" in comment for comment in comments), comments
    chunks = [json.loads(event.data) for event in found if event.data and event.data != "[DONE]"]
    assert "".join(chunk["choices"][0]["delta"].get("content", "") for chunk in chunks) == " tok" * 5
