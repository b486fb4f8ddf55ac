"""The worker's app in-process with the real llama.cpp engine: the SSE wire format, one request at a time,
cancel within a token, and 4xx JSON for bad requests."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from rbee.api.state import WorkerState
from rbee.worker.backends.gguf import GgufBackend
from rbee.worker.runtime import release
from rbee.worker.server import Runtime, WorkerOptions, create_app
from tests.http.streams import cancel_after, endless

TOKEN = {"Authorization": "Bearer w-token"}


def options(path: Path) -> WorkerOptions:
    return WorkerOptions(
        worker_id="w-1",
        model="smol",
        model_path=str(path),
        backend="gguf",
        device="cpu",
        host="127.0.0.1",
        port=0,
        hive_url=None,
        token="w-token",
    )


@pytest.fixture(scope="module")
def engine(smollm2: Path) -> Iterator[GgufBackend]:
    backend = GgufBackend(str(smollm2), threads=2)
    backend.load(lambda _: None)
    yield backend
    backend.unload()


@pytest.fixture
def client(engine: GgufBackend, smollm2: Path) -> Iterator[tuple[TestClient, Runtime]]:
    runtime = Runtime(options=options(smollm2), engine=engine, state=WorkerState.IDLE)
    with TestClient(create_app(runtime)) as test_client:
        yield test_client, runtime


def events(body: str) -> list[tuple[str | None, dict[str, object]]]:
    out, name = [], None
    for line in body.splitlines():
        if line.startswith("event:"):
            name = line[6:].strip()
        elif line.startswith("data:"):
            out.append((name, json.loads(line[5:])))
            name = None
    return out


def test_execute_streams_tokens_then_done(client: tuple[TestClient, Runtime]) -> None:
    test_client, runtime = client
    response = test_client.post("/v1/execute", json={"prompt": "The sky is", "max_tokens": 6, "seed": 3}, headers=TOKEN)
    assert response.headers["content-type"].startswith("text/event-stream")
    stream = events(response.text)
    tokens = [data for name, data in stream if "token" in data]
    assert [token["index"] for token in tokens] == list(range(len(tokens)))
    assert stream[-1][1] == {"done": True, "total_tokens": 6, "prompt_tokens": 3, "finish_reason": "length"}
    assert runtime.state is WorkerState.IDLE


def test_same_seed_same_text(client: tuple[TestClient, Runtime]) -> None:
    test_client, _ = client
    body = {
        "messages": [{"role": "user", "content": "Tell me a story."}],
        "max_tokens": 12,
        "seed": 42,
        "temperature": 0.9,
    }
    first = events(test_client.post("/v1/execute", json=body, headers=TOKEN).text)
    second = events(test_client.post("/v1/execute", json=body, headers=TOKEN).text)
    assert first == second  # the events; the second found its prompt in the cache (its end comment says so)


def test_stop_strings_end_the_text(client: tuple[TestClient, Runtime]) -> None:
    test_client, _ = client
    body = {"prompt": "1, 2, 3, 4, 5,", "max_tokens": 30, "temperature": 0, "stop": [" 8"]}
    stream = events(test_client.post("/v1/execute", json=body, headers=TOKEN).text)
    text = "".join(str(data.get("token", "")) for _, data in stream)
    assert " 8" not in text and stream[-1][1]["finish_reason"] == "stop"


def test_cancel_stops_within_a_token(client: tuple[TestClient, Runtime], engine: GgufBackend) -> None:
    test_client, runtime = client
    seen = cancel_after(
        test_client,
        TOKEN,
        {"request_id": "r-1", "prompt": "Write a long essay.", "max_tokens": 400, "logit_bias": endless(engine)},
    )
    assert seen[-1] == -1, "the stream ends with a cancelled done event"
    assert len(seen) <= 3 + 2, f"at most one token after the cancel: {seen}"
    assert runtime.state is WorkerState.IDLE


@pytest.mark.parametrize(
    ("body", "words"),
    [
        (b"{oops", "Invalid JSON"),
        ({"max_tokens": 5}, "exactly one of 'prompt' or 'messages'"),
        ({"prompt": "x", "max_tokens": 0}, "max_tokens"),
        ({"prompt": "x", "messages": [{"role": "user", "content": "y"}]}, "exactly one"),
        ({"messages": [{"role": "robot", "content": "y"}]}, "role"),
    ],
)
def test_bad_requests_get_400(client: tuple[TestClient, Runtime], body: object, words: str) -> None:
    test_client, _ = client
    if isinstance(body, bytes):
        response = test_client.post("/v1/execute", content=body, headers=TOKEN)
    else:
        response = test_client.post("/v1/execute", json=body, headers=TOKEN)
    assert response.status_code == 400
    assert words in response.json()["error"]["message"]


def test_a_loading_or_busy_worker_refuses_with_503(client: tuple[TestClient, Runtime]) -> None:
    test_client, runtime = client
    runtime.state = WorkerState.LOADING
    assert test_client.post("/v1/execute", json={"prompt": "x"}, headers=TOKEN).status_code == 503
    assert test_client.get("/v1/ready", headers=TOKEN).status_code == 503
    runtime.state = WorkerState.IDLE
    held = [runtime.claim(f"held-{i}") for i in range(runtime.slots)]  # every slot is taken
    assert test_client.post("/v1/execute", json={"prompt": "x"}, headers=TOKEN).json()["error"]["code"] == "busy"
    for request in held:
        release(runtime, request)
    assert runtime.state is WorkerState.IDLE
    assert test_client.get("/v1/ready", headers=TOKEN).json()["ready"] is True


def test_the_workers_credential_is_required(client: tuple[TestClient, Runtime]) -> None:
    test_client, _ = client
    assert test_client.post("/v1/execute", json={"prompt": "x"}).status_code == 401
    assert test_client.get("/health").status_code == 200


def test_a_worker_stopped_mid_answer_ends_with_an_error_not_a_finish(
    client: tuple[TestClient, Runtime], engine: GgufBackend
) -> None:
    """Scale-down, parking and destroy stop a worker through /v1/admin/shutdown: its client must not read a cut
    answer as a complete one."""
    test_client, _ = client
    seen: list[tuple[str | None, dict[str, object]]] = []
    body = {
        "prompt": "Write a long essay.",
        "max_tokens": 400,
        "format": "openai-completion",
        "logit_bias": endless(engine),
    }
    with test_client.stream("POST", "/v1/execute", json={**body, "format": "rbee"}, headers=TOKEN) as reply:
        lines = reply.iter_lines()
        for line in lines:
            if line.startswith("data:"):
                break
        assert test_client.post("/v1/admin/shutdown", headers=TOKEN).status_code == 202
        seen = events("\n".join(lines))
    name, last = seen[-1]
    assert name == "error" and last["code"] == "worker_stopped", seen[-3:]
    assert not any(data.get("done") for _, data in seen)


def test_an_answer_past_its_time_limit_ends_with_an_error_and_frees_the_worker(
    client: tuple[TestClient, Runtime], engine: GgufBackend
) -> None:
    """The queen sends each request its model's request_timeout; a generation that runs past it is cut there and
    ends with a `time_limit` error, never a finish reason, and the worker takes the next request at once."""
    test_client, runtime = client
    body = {"prompt": "Write a long essay.", "max_tokens": 2000, "time_limit": 0.3, "logit_bias": endless(engine)}
    started = time.monotonic()
    reply = test_client.post("/v1/execute", json=body, headers=TOKEN)
    took = time.monotonic() - started
    name, last = events(reply.text)[-1]
    assert name == "error" and last["code"] == "time_limit", events(reply.text)[-2:]
    assert "ran past its time limit of 0.3 s" in str(last["error"])
    assert took < 3.0, took
    assert runtime.state is WorkerState.IDLE
    again = test_client.post("/v1/execute", json={"prompt": "Hi", "max_tokens": 2}, headers=TOKEN)
    assert events(again.text)[-1][1].get("done") is True
