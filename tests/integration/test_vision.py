"""A model that sees: SmolLM2 with a multimodal projector (hive.yaml's `mmproj`, a tiny one made at test time)
through the real queen, hive and gguf worker, asked by the official openai and anthropic clients with images
inline; and each way an image is refused, by name."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import anthropic
import httpx
import openai
import pytest

from tests.fleet import Fleet, applied_fleet, make_fleet
from tests.images import IMAGE_POSITIONS, data_url, make_tiny_projector, png
from tests.models import SMOLLM2_SOURCE

pytestmark = pytest.mark.slow

RED, BLUE = png(48, 32, (220, 20, 20)), png(80, 80, (20, 20, 220))


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    root = tmp_path_factory.mktemp("vision")
    eyes = root / "eyes"
    eyes.mkdir()
    make_tiny_projector(eyes / "mmproj-tiny.gguf")
    options = f"idle_timeout: 0, mmproj: 'file://{eyes}/mmproj-tiny.gguf'"
    fleet = make_fleet(root, SMOLLM2_SOURCE, model_options=options)
    text = fleet.spec.read_text().replace("data_dir:", f"model_dirs: ['{eyes}'], data_dir:", 1)
    fleet.spec.write_text(text)
    with applied_fleet(fleet):
        yield fleet


@pytest.fixture
def client(fleet: Fleet) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=f"{fleet.queen_url}/v1", api_key=fleet.api_key, max_retries=0) as client:
        yield client


def _ask(picture: bytes | None) -> list[dict[str, object]]:
    content: list[dict[str, object]] = [{"type": "text", "text": "What colour is "}]
    if picture is not None:
        content.append({"type": "image_url", "image_url": {"url": data_url(picture)}})
    content.append({"type": "text", "text": " this?"})
    return [{"role": "user", "content": content}]


def test_an_image_takes_its_positions_in_the_prompt_and_is_answered(client: openai.OpenAI) -> None:
    asked = {"model": "smollm2", "max_tokens": 8, "temperature": 0, "seed": 1}
    text_only = client.chat.completions.create(messages=_ask(None), **asked)  # type: ignore[call-overload]
    seeing = client.chat.completions.create(messages=_ask(RED), **asked)  # type: ignore[call-overload]
    assert text_only.usage is not None and seeing.usage is not None
    assert seeing.usage.prompt_tokens == text_only.usage.prompt_tokens + IMAGE_POSITIONS
    assert seeing.choices[0].message.content
    assert seeing.choices[0].finish_reason in ("stop", "length")


def test_a_streamed_answer_about_an_image_equals_the_whole_one(client: openai.OpenAI) -> None:
    asked = {"model": "smollm2", "max_tokens": 10, "temperature": 0, "seed": 4}
    whole = client.chat.completions.create(messages=_ask(BLUE), **asked)  # type: ignore[call-overload]
    chunks = client.chat.completions.create(messages=_ask(BLUE), stream=True, **asked)  # type: ignore[call-overload]
    streamed = "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices)
    assert streamed == whole.choices[0].message.content


def test_images_and_text_in_one_batch_answer_as_each_does_alone(client: openai.OpenAI) -> None:
    """The worker's four slots share one batch loop: an image is evaluated into its own sequence while the
    others generate, and nobody's answer changes for it."""
    asked = {"model": "smollm2", "max_tokens": 12, "temperature": 0, "seed": 9}
    questions = [_ask(RED), _ask(None), _ask(BLUE), [{"role": "user", "content": "Name a fruit."}]]

    def answer(messages: list[dict[str, object]]) -> str:
        made = client.chat.completions.create(messages=messages, **asked)  # type: ignore[call-overload]
        return str(made.choices[0].message.content)

    alone = [answer(question) for question in questions]
    with ThreadPoolExecutor(len(questions)) as pool:
        together = list(pool.map(answer, questions))
    assert together == alone


def test_the_responses_api_takes_an_input_image(client: openai.OpenAI) -> None:
    content = [{"type": "input_text", "text": "Describe "}, {"type": "input_image", "image_url": data_url(RED)}]
    made = client.responses.create(model="smollm2", input=[{"role": "user", "content": content}], max_output_tokens=6)  # type: ignore[list-item,typeddict-item]
    plain = client.responses.create(
        model="smollm2", input=[{"role": "user", "content": "Describe "}], max_output_tokens=6
    )
    assert made.usage is not None and plain.usage is not None
    assert made.usage.input_tokens == plain.usage.input_tokens + IMAGE_POSITIONS


def test_the_anthropic_client_sends_an_image_block(fleet: Fleet) -> None:
    with anthropic.Anthropic(base_url=fleet.queen_url, api_key=fleet.api_key, max_retries=0) as client:
        source = {"type": "base64", "media_type": "image/png", "data": base64.b64encode(RED).decode()}
        blocks = [{"type": "image", "source": source}, {"type": "text", "text": "What is this?"}]
        answer = client.messages.create(
            model="smollm2",
            max_tokens=6,
            messages=[{"role": "user", "content": blocks}],  # type: ignore[list-item]
        )
        plain = client.messages.create(
            model="smollm2", max_tokens=6, messages=[{"role": "user", "content": "What is this?"}]
        )
        counted = client.messages.count_tokens(model="smollm2", messages=[{"role": "user", "content": blocks}])  # type: ignore[list-item]
    assert answer.usage.input_tokens == plain.usage.input_tokens + IMAGE_POSITIONS == counted.input_tokens
    assert answer.content and answer.content[0].type == "text"


@pytest.mark.parametrize(
    ("url", "words"),
    [
        ("https://example.invalid/cat.png", "rbee fetches no URL for a client"),
        ("data:image/webp;base64,UklGRg==", "is image/webp; send image/png"),
        ("data:image/png;base64,not base64!", "is not valid base64"),
    ],
)
def test_an_image_the_queen_cannot_take_is_refused_naming_the_part(client: openai.OpenAI, url: str, words: str) -> None:
    content = [{"type": "text", "text": "Look:"}, {"type": "image_url", "image_url": {"url": url}}]
    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(model="smollm2", messages=[{"role": "user", "content": content}], max_tokens=2)  # type: ignore[misc,list-item]
    body = refused.value.body
    assert isinstance(body, dict) and body.get("param") == "messages.0.content.1", body
    assert words in str(body.get("message")), body


def test_bytes_that_are_no_picture_are_the_clients_400_from_the_worker(client: openai.OpenAI) -> None:
    content = [
        {"type": "image_url", "image_url": {"url": data_url(b"GIF89a but not really")}},
        {"type": "text", "text": "?"},
    ]
    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(model="smollm2", messages=[{"role": "user", "content": content}], max_tokens=2)  # type: ignore[misc,list-item]
    body = refused.value.body
    assert isinstance(body, dict) and body.get("code") == "invalid_image", body
    assert "is not a PNG, JPEG, GIF or BMP image" in str(body.get("message")), body


def test_too_many_images_are_refused(client: openai.OpenAI) -> None:
    part = {"type": "image_url", "image_url": {"url": data_url(RED)}}
    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(  # type: ignore[call-overload]
            model="smollm2",
            messages=[{"role": "user", "content": [part] * 9 + [{"type": "text", "text": "?"}]}],
            max_tokens=2,
        )
    assert "send at most 8" in str(refused.value.body)


def test_the_catalog_and_the_plan_know_the_projector(fleet: Fleet) -> None:
    state = httpx.get(f"{fleet.hive_url}/v1/state", headers=fleet.hive_auth(), timeout=10).json()
    entry = next(model for model in state["catalog"] if model["name"] == "smollm2")
    assert entry["mmproj"].endswith("mmproj-tiny.gguf")
    planned = fleet.rbee("plan", str(fleet.spec))
    assert "in the catalog (99.9 MB, with its mmproj: sees images)" in planned.stdout, planned.stdout
    changed = fleet.spec.read_text().replace("mmproj-tiny.gguf", "mmproj-other.gguf")
    other = fleet.root / "other.yaml"
    other.write_text(changed)
    replanned = fleet.rbee("plan", str(other))
    assert "mmproj changed" in replanned.stdout and "mmproj-other.gguf" in replanned.stdout, replanned.stdout
