"""An image worker (the diffusers backend on a tiny random Stable Diffusion made here) over its HTTP API: the
design's own shape (`{"prompt", "width", "height"}` in, `{"images": [...]}` out), rbee's progress events, and
the time limit that ends a painting at its next step, whole or streamed."""

from __future__ import annotations

import base64
import io
import json
import time
from collections.abc import Iterator

import httpx
import pytest
from PIL import Image
from starlette.testclient import TestClient

from rbee.api import sse, wire
from rbee.api.state import WorkerState
from rbee.worker.backends.diffusers import DiffusersBackend
from rbee.worker.server import Runtime, WorkerOptions, create_app
from tests.models import make_tiny_diffusion

TOKEN = {"Authorization": "Bearer w-token"}
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> DiffusersBackend:
    folder = make_tiny_diffusion(tmp_path_factory.mktemp("diffusion") / "tiny-sd")
    painter = DiffusersBackend(str(folder), threads=2)
    painter.load(lambda _: None)
    return painter


@pytest.fixture
def client(engine: DiffusersBackend) -> Iterator[tuple[TestClient, Runtime]]:
    options = WorkerOptions("w-1", "painter", engine.model_path, "diffusers", "cpu", "127.0.0.1", 0, None, "w-token")
    runtime = Runtime(options=options, engine=engine, state=WorkerState.IDLE)
    with TestClient(create_app(runtime)) as test_client:
        yield test_client, runtime


def test_the_designs_shape_whole(client: tuple[TestClient, Runtime]) -> None:
    test_client, runtime = client
    reply = test_client.post(
        "/v1/execute", json={"prompt": "a fox", "width": 96, "height": 64, "steps": 3}, headers=TOKEN
    )
    assert reply.status_code == 200, reply.text
    (only,) = reply.json()["images"]
    assert (only["format"], only["width"], only["height"]) == ("png", 96, 64)
    assert isinstance(only["seed"], int), "a drawn seed is said, so the picture can be made again"
    with Image.open(io.BytesIO(base64.b64decode(only["data"]))) as image:
        assert image.size == (96, 64)
    again = test_client.post(
        "/v1/execute",
        json={"prompt": "a fox", "width": 96, "height": 64, "steps": 3, "seed": only["seed"]},
        headers=TOKEN,
    )
    assert again.json()["images"][0]["data"] == only["data"]
    assert runtime.state is WorkerState.IDLE and not runtime.active


def test_rbee_events_step_by_step_then_the_pictures_and_the_end(client: tuple[TestClient, Runtime]) -> None:
    body = {"prompt": "a fox", "width": 64, "height": 64, "steps": 4, "n": 2, "stream": True, "partial_images": 1}
    reply = post(client[0], body)
    events = [event for event in sse.events([reply.content]) if event.data]
    data = [event.json() for event in events]
    assert [item["step"] for item in data if "step" in item] == [1, 2, 3, 4]
    assert [item["index"] for item in data if "partial" in item] == [0]
    assert len(data[-1]["images"]) == 2
    assert wire.parse_end(reply.content) == {"prompt_tokens": 0, "completion_tokens": 0, "finish_reason": "stop"}


def test_refusals_before_any_step(client: tuple[TestClient, Runtime]) -> None:
    test_client = client[0]
    for body in (
        {"prompt": "x", "width": 60},
        {"prompt": ""},
        {"prompt": "x", "n": 11},
        {"prompt": "x", "partial_images": 1},
    ):
        reply = test_client.post("/v1/execute", json=body, headers=TOKEN)
        assert reply.status_code == 400, body
    assert test_client.post("/v1/execute", json={"prompt": "x"}).status_code == 401


def test_the_time_limit_ends_the_painting_at_its_next_step(client: tuple[TestClient, Runtime]) -> None:
    test_client, runtime = client
    long = {"prompt": "a fox", "width": 128, "height": 128, "steps": 200, "time_limit": 0.5}
    started = time.monotonic()
    whole = test_client.post("/v1/execute", json=long, headers=TOKEN)
    assert whole.status_code == 500 and whole.json()["error"]["code"] == "time_limit"
    streamed = post(test_client, {**long, "stream": True})
    errors = [event for event in sse.events([streamed.content]) if event.name == "error"]
    assert len(errors) == 1 and json.loads(errors[0].data)["code"] == "time_limit"
    assert "images" not in streamed.text
    assert wire.parse_end(streamed.content)["finish_reason"] == "error"  # type: ignore[index]
    assert time.monotonic() - started < 20, "two paintings of 200 steps were not cut at their limit"
    assert not runtime.active


def post(test_client: TestClient, body: dict[str, object]) -> httpx.Response:
    return test_client.post("/v1/execute", json=body, headers=TOKEN)
