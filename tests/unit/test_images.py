"""Images in chat messages as table cases: OpenAI image_url parts and Anthropic image blocks to rbee's ChatImage
(where each stands in the text), each refusal naming the part; and the catalog keeps a model's projector."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest

from rbee.api import anthropic
from rbee.api import openai as oai
from rbee.api.wire import Unsupported
from rbee.hive.catalog import Catalog, ModelRecord

PICTURE = base64.b64encode(b"\x89PNG\r\n\x1a\n...").decode()
URL = f"data:image/png;base64,{PICTURE}"


def _chat(parts: list[dict[str, object]]) -> oai.ChatRequest:
    return oai.ChatRequest.model_validate({"model": "eyes", "messages": [{"role": "user", "content": parts}]})


def test_an_image_part_stands_where_it_was_among_the_text() -> None:
    parts = [
        {"type": "text", "text": "What is "},
        {"type": "image_url", "image_url": {"url": URL, "detail": "low"}},
        {"type": "text", "text": " this?"},
    ]
    [message] = _chat(parts).rbee_messages(sees=True)
    assert message.content == "What is  this?"
    assert message.images is not None and [(i.at, i.data) for i in message.images] == [(8, PICTURE)]


@pytest.mark.parametrize(
    ("part", "sees", "words"),
    [
        ({"type": "image_url", "image_url": {"url": URL}}, False, "the model eyes sees no images; give the model"),
        ({"type": "image_url", "image_url": {"url": "http://10.0.0.1/a.png"}}, True, "rbee fetches no URL"),
        ({"type": "image_url", "image_url": {"url": "data:image/png,raw"}}, True, "must be a base64 data: URL"),
        ({"type": "image_url", "image_url": {"url": "data:image/svg+xml;base64,PHN2Zz4="}}, True, "is image/svg+xml"),
        ({"type": "image_url", "image_url": {"url": "data:image/png;base64,@@@"}}, True, "is not valid base64"),
        ({"type": "image_url", "image_url": 7}, True, "must be {type: image_url, image_url: {url: ...}}"),
        ({"type": "input_audio", "input_audio": {}}, True, "is a part of type input_audio; rbee takes text and"),
    ],
)
def test_each_image_refusal_names_the_part(part: dict[str, object], sees: bool, words: str) -> None:
    with pytest.raises(Unsupported) as refused:
        _chat([{"type": "text", "text": "Look"}, part]).rbee_messages(sees=sees)
    assert refused.value.param == "messages.0.content.1"
    assert words in str(refused.value) and "messages[0].content[1]" in str(refused.value)


def test_more_than_eight_images_in_a_request_are_refused() -> None:
    part = {"type": "image_url", "image_url": {"url": URL}}
    with pytest.raises(Unsupported, match="holds 9 images; send at most 8"):
        _chat([part] * 9).rbee_messages(sees=True)


def _messages(blocks: list[dict[str, object]]) -> anthropic.MessagesRequest:
    return anthropic.MessagesRequest.model_validate(
        {"model": "eyes", "max_tokens": 4, "messages": [{"role": "user", "content": blocks}]}
    )


def test_an_anthropic_image_block_becomes_an_image_where_it_stands() -> None:
    source = {"type": "base64", "media_type": "image/jpeg", "data": PICTURE}
    blocks = [{"type": "text", "text": "Hi"}, {"type": "image", "source": source}, {"type": "text", "text": "?"}]
    [message] = _messages(blocks).chat(sees=True)
    assert message.content == "Hi?" and message.images is not None
    assert [(i.at, i.data) for i in message.images] == [(2, PICTURE)]
    assert _messages([{"type": "text", "text": "plain"}]).chat(sees=True)[0].images is None


@pytest.mark.parametrize(
    ("source", "sees", "words"),
    [
        ({"type": "base64", "media_type": "image/png", "data": PICTURE}, False, "sees no images"),
        ({"type": "url", "url": "https://example.invalid/a.png"}, True, "must have a base64 source"),
        ({"type": "base64", "media_type": "image/tiff", "data": PICTURE}, True, "is image/tiff"),
    ],
)
def test_each_anthropic_image_refusal_names_the_block(source: dict[str, object], sees: bool, words: str) -> None:
    with pytest.raises(Unsupported) as refused:
        _messages([{"type": "image", "source": source}]).chat(sees=sees)
    assert refused.value.param == "messages.0.content.0" and words in str(refused.value)


def test_the_catalog_keeps_a_models_projector(tmp_path: Path) -> None:
    record = ModelRecord(
        "eyes", "hf://o/r/m.gguf", "gguf", "text", "/m/eyes/m.gguf", 10, None, True, True,
        mmproj="hf://o/r/mmproj.gguf", mmproj_path="/m/eyes/mmproj/mmproj.gguf",
    )  # fmt: skip
    catalog = Catalog(tmp_path / "hive.db")
    catalog.put_model(record)
    catalog.close()
    again = Catalog(tmp_path / "hive.db")
    assert again.model("eyes") == record and again.models()[0].entry().mmproj == "hf://o/r/mmproj.gguf"
    again.close()


def test_a_responses_input_image_stands_where_it_was() -> None:
    from rbee.api import responses

    content = [
        {"type": "input_text", "text": "Say "},
        {"type": "input_image", "image_url": URL},
        {"type": "input_text", "text": "it"},
    ]
    request = responses.ResponsesRequest.model_validate(
        {"model": "eyes", "input": [{"role": "user", "content": content}]}
    )
    [message] = request.chat(sees=True)
    assert message.content == "Say it" and message.images is not None and message.images[0].at == 4
    with pytest.raises(Unsupported, match="sees no images") as refused:
        request.chat(sees=False)
    assert refused.value.param == "input.0.content.1"
    content[1] = {"type": "input_image", "file_id": "file-1"}
    with pytest.raises(Unsupported, match="file_id is not served"):
        responses.ResponsesRequest.model_validate(
            {"model": "eyes", "input": [{"role": "user", "content": content}]}
        ).chat(sees=True)


def test_a_file_model_takes_a_file_projector_where_it_lies_and_refuses_a_download(tmp_path: Path) -> None:
    from rbee.api.wire import ModelRequest
    from rbee.hive import provision
    from tests.models import tiny_gguf

    (tmp_path / "m.gguf").write_bytes(tiny_gguf())
    (tmp_path / "eyes.gguf").write_bytes(tiny_gguf(32))
    request = ModelRequest(name="m", source=f"file://{tmp_path}/m.gguf", mmproj=f"file://{tmp_path}/eyes.gguf")
    record = provision.provision(request, tmp_path / "models", lambda event: None, (str(tmp_path),))
    assert record.mmproj_path == str(tmp_path / "eyes.gguf") and record.mmproj == request.mmproj
    assert record.size_bytes == (tmp_path / "m.gguf").stat().st_size + (tmp_path / "eyes.gguf").stat().st_size
    fetched = request.model_copy(update={"mmproj": "hf://o/r/eyes.gguf"})
    with pytest.raises(provision.ProvisionError, match="is a file on this hive and its mmproj is not"):
        provision.provision(fetched, tmp_path / "models", lambda event: None, (str(tmp_path),))
