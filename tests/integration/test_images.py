"""Image generation end to end: a tiny random Stable Diffusion pipeline made here (tests/models.py) provisioned
from file:// by a real hive, painted by a diffusers worker, asked through the queen with the official openai client
and plain HTTP: decodable pictures of the asked size, the same seed giving the same bytes, progress a step at a time
with previews, each format, refusals by name, a client that leaves freeing its worker at the next step, a parked
model started by its first request, and `rbee infer --out picture.png`. The pipeline is random, so its pictures are
noise: what is checked is the real pipeline code path and the shapes (a real model is needed for real pictures)."""

from __future__ import annotations

import base64
import io
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
from PIL import Image

from tests.fleet import Fleet, make_fleet
from tests.models import make_tiny_diffusion

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_diffusion(tmp_path_factory.mktemp("diffusion") / "tiny-sd")


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory, pipeline: Path) -> Iterator[Fleet]:
    root = tmp_path_factory.mktemp("images")
    fleet = make_fleet(root, f"file://{pipeline}", model="painter", model_options="kind: image, idle_timeout: 0")
    applied = fleet.rbee("apply", str(fleet.spec), "--yes")
    assert applied.returncode == 0, applied.stdout + applied.stderr
    yield fleet
    fleet.rbee("destroy", str(fleet.spec), "--yes")


def client_of(fleet: Fleet) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{fleet.queen_url}/v1", api_key=fleet.api_key, max_retries=0)


def picture(data: str) -> Image.Image:
    image = Image.open(io.BytesIO(base64.b64decode(data)))
    image.load()
    return image


def test_the_openai_client_gets_pictures_of_the_asked_size_and_a_seed_repeats_them(fleet: Fleet) -> None:
    with client_of(fleet) as client:
        painted = client.images.generate(
            model="painter", prompt="a red fox", size="64x96", n=2, extra_body={"seed": 5, "steps": 4}
        )
        again = client.images.generate(
            model="painter", prompt="a red fox", size="64x96", n=2, extra_body={"seed": 5, "steps": 4}
        )
        other = client.images.generate(
            model="painter", prompt="a red fox", size="64x96", n=1, extra_body={"seed": 6, "steps": 4}
        )
    assert painted.data is not None and len(painted.data) == 2 and painted.size == "64x96"
    images = [picture(str(item.b64_json)) for item in painted.data]
    assert [(image.format, image.size) for image in images] == [("PNG", (64, 96))] * 2
    assert painted.data[0].b64_json != painted.data[1].b64_json, "image k starts from seed + k"
    assert again.data is not None and [item.b64_json for item in again.data] == [item.b64_json for item in painted.data]
    assert other.data is not None and other.data[0].b64_json != painted.data[0].b64_json


def test_the_model_size_when_none_is_asked_and_each_format(fleet: Fleet) -> None:
    def paint(**fields: object) -> httpx.Response:
        body = {"model": "painter", "prompt": "a lighthouse", "steps": 2, **fields}
        return httpx.post(f"{fleet.queen_url}/v1/images/generations", json=body, headers=fleet.keyed, timeout=60)

    own = paint()
    assert own.status_code == 200, own.text
    assert picture(own.json()["data"][0]["b64_json"]).size == (64, 64), "the tiny pipeline's own size"
    jpeg = paint(output_format="jpeg", output_compression=40, size="128x64")
    assert jpeg.status_code == 200 and jpeg.json()["output_format"] == "jpeg"
    assert (picture(jpeg.json()["data"][0]["b64_json"]).format, jpeg.json()["size"]) == ("JPEG", "128x64")
    webp = paint(output_format="webp")
    assert picture(webp.json()["data"][0]["b64_json"]).format == "WEBP"
    negative = paint(negative_prompt="blurry", guidance_scale=3.0, response_format="b64_json", quality="auto")
    assert negative.status_code == 200, negative.text


def test_a_stream_says_each_step_and_sends_previews(fleet: Fleet) -> None:
    with client_of(fleet) as client:
        stream = client.images.generate(
            model="painter",
            prompt="a lighthouse at night",
            size="64x64",
            stream=True,
            partial_images=2,
            extra_body={"steps": 6, "seed": 1},
        )
        events = list(stream)
    kinds = [event.type for event in events]
    assert kinds.count("rbee.image_generation.progress") == 6
    assert kinds.count("image_generation.partial_image") == 2 and kinds[-1] == "image_generation.completed"
    steps = [event.model_dump()["step"] for event in events if event.type == "rbee.image_generation.progress"]
    assert steps == [1, 2, 3, 4, 5, 6]
    completed = events[-1]
    assert completed.size == "64x64" and completed.output_format == "png"
    assert picture(str(completed.b64_json)).size == (64, 64)
    previews = [event for event in events if event.type == "image_generation.partial_image"]
    assert [preview.partial_image_index for preview in previews] == [0, 1]  # type: ignore[union-attr]
    assert picture(str(previews[0].b64_json)).size == (64, 64)
    whole = httpx.post(
        f"{fleet.queen_url}/v1/images/generations",
        json={"model": "painter", "prompt": "a lighthouse at night", "size": "64x64", "steps": 6, "seed": 1},
        headers=fleet.keyed,
        timeout=60,
    )
    assert whole.json()["data"][0]["b64_json"] == completed.b64_json, "streamed or whole: the same picture"


def test_refusals_name_the_field(fleet: Fleet) -> None:
    def param(**fields: object) -> object:
        body = {"model": "painter", "prompt": "a fox", **fields}
        reply = httpx.post(f"{fleet.queen_url}/v1/images/generations", json=body, headers=fleet.keyed, timeout=30)
        assert reply.status_code == 400, reply.text
        return reply.json()["error"]["param"]

    assert param(size="65x64") == "width"
    assert param(size="big") == "size"
    assert param(size="4096x4096") == "width"
    assert param(response_format="url") == "response_format"
    assert param(style="vivid") == "style"
    assert param(quality="high") == "quality"
    assert param(background="transparent") == "background"
    assert param(output_format="gif") == "output_format"
    assert param(output_compression=50) == "output_compression"
    assert param(n=11) == "n"
    assert param(partial_images=1) == "partial_images"
    assert param(frobnicate=1) == "frobnicate"
    chat = httpx.post(
        f"{fleet.queen_url}/v1/chat/completions",
        json={"model": "painter", "messages": [{"role": "user", "content": "hi"}]},
        headers=fleet.keyed,
    )
    assert chat.status_code == 400 and "/v1/images/generations" in chat.json()["error"]["message"]
    unknown = httpx.post(
        f"{fleet.queen_url}/v1/images/generations", json={"model": "nope", "prompt": "x"}, headers=fleet.keyed
    )
    assert unknown.status_code == 404 and "painter" in unknown.json()["error"]["message"]
    nokey = httpx.post(f"{fleet.queen_url}/v1/images/generations", json={"model": "painter", "prompt": "x"})
    assert nokey.status_code == 401


def test_a_client_that_leaves_frees_the_worker_at_the_next_step(fleet: Fleet) -> None:
    body = {"model": "painter", "prompt": "a long one", "size": "128x128", "steps": 200, "stream": True}
    with httpx.stream(
        "POST", f"{fleet.queen_url}/v1/images/generations", json=body, headers=fleet.keyed, timeout=60
    ) as reply:
        assert reply.status_code == 200
        for line in reply.iter_lines():
            if "progress" in line:
                break  # the first step is done: leave
    deadline = time.monotonic() + 10
    while in_flight(fleet) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not in_flight(fleet), "the worker kept painting for a client that left"
    quick = httpx.post(
        f"{fleet.queen_url}/v1/images/generations",
        json={"model": "painter", "prompt": "next", "size": "64x64", "steps": 2},
        headers=fleet.keyed,
        timeout=60,
    )
    assert quick.status_code == 200


def in_flight(fleet: Fleet) -> int:
    state = httpx.get(f"{fleet.queen_url}/v2/status", headers=fleet.operator).json()
    return sum(route["in_flight"] for route in state["routes"] if route["model"] == "painter")


def test_the_worker_catalog_and_plan(fleet: Fleet) -> None:
    state = httpx.get(f"{fleet.hive_url}/v1/state", headers=fleet.hive_auth()).json()
    assert [worker["backend"] for worker in state["workers"]] == ["diffusers"]
    entry = next(model for model in state["catalog"] if model["name"] == "painter")
    assert entry["format"] == "safetensors" and entry["size_bytes"] > 1_000_000
    planned = fleet.rbee("plan", str(fleet.spec))
    assert planned.returncode == 0 and "painter" in planned.stdout, planned.stdout


def test_rbee_infer_writes_a_picture(fleet: Fleet, tmp_path: Path) -> None:
    out = tmp_path / "fox.png"
    painted = fleet.rbee("infer", "-m", "painter", "--out", str(out), "--size", "64x64", "--steps", "3", "a fox")
    assert painted.returncode == 0, painted.stderr
    with Image.open(out) as image:
        assert image.size == (64, 64) and "step 3/3" in painted.stderr
    assert not list(tmp_path.glob(".*partial"))
    refused = fleet.rbee("infer", "-m", "painter", "--out", str(tmp_path / "bad.png"), "--size", "65x64", "a fox")
    assert refused.returncode == 1 and "width" in refused.stderr and not (tmp_path / "bad.png").exists()
    as_text = fleet.rbee("infer", "-m", "painter", "a fox")
    assert as_text.returncode == 1 and "--out picture.png" in as_text.stderr, as_text.stderr


def test_a_parked_image_model_starts_on_its_first_request(
    tmp_path_factory: pytest.TempPathFactory, pipeline: Path
) -> None:
    root = tmp_path_factory.mktemp("parked-images")
    fleet = make_fleet(root, f"file://{pipeline}", model="painter", model_options="kind: image, idle_timeout: 1")
    applied = fleet.rbee("apply", str(fleet.spec), "--yes")
    assert applied.returncode == 0, applied.stdout + applied.stderr
    try:
        deadline = time.monotonic() + 30
        while running(fleet) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not running(fleet), "the idle worker was not parked"
        stream = httpx.post(
            f"{fleet.queen_url}/v1/images/generations",
            json={"model": "painter", "prompt": "wake", "size": "64x64", "steps": 2, "stream": True},
            headers=fleet.keyed,
            timeout=120,
        )
        assert stream.status_code == 200 and ": rbee cold start" in stream.text
        assert "image_generation.completed" in stream.text
    finally:
        fleet.rbee("destroy", str(fleet.spec), "--yes")


def running(fleet: Fleet) -> list[object]:
    state = httpx.get(f"{fleet.hive_url}/v1/state", headers=fleet.hive_auth()).json()
    return [worker for worker in state["workers"] if worker["state"] in ("idle", "busy", "loading")]
