"""api/anthropic.py as table cases: an Anthropic request to rbee's chat and options, and rbee's answer and tokens
back to Anthropic's Message and stream events."""

from __future__ import annotations

import json

import pytest

from rbee.api import anthropic
from rbee.api.calls import Tool


def test_system_blocks_and_turns_become_one_chat() -> None:
    request = anthropic.MessagesRequest.model_validate(
        {
            "model": "m",
            "max_tokens": 5,
            "system": [{"type": "text", "text": "Be "}, {"type": "text", "text": "brief."}],
            "messages": [
                {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": [{"type": "text", "text": "Hello"}]},
            ],
            "stop_sequences": ["\n\n"],
            "metadata": {"user_id": "u"},
        }
    )
    request.refuse_unserved()
    assert [(m.role, m.content) for m in request.chat()] == [
        ("system", "Be brief."),
        ("user", "Hi"),
        ("assistant", "Hello"),
    ]
    assert request.sampling()["stop"] == ["\n\n"] and request.sampling()["max_tokens"] == 5


@pytest.mark.parametrize(
    ("extra", "param"),
    [({"thinking": {"type": "enabled"}}, "thinking"), ({"typo": 1}, "typo")],
)
def test_what_is_not_served_is_named(extra: dict[str, object], param: str) -> None:
    request = anthropic.MessagesRequest.model_validate(
        {"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "Hi"}], **extra}
    )
    with pytest.raises(anthropic.Unsupported) as refused:
        request.refuse_unserved()
    assert refused.value.param == param


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"tools": [{"name": "f"}]}, "tools.0"),
        ({"tools": [{"name": "f", "input_schema": {}}], "tool_choice": {"type": "tool", "name": "g"}}, "tool_choice"),
    ],
)
def test_tools_without_a_schema_or_a_choice_of_none_of_them_are_named(extra: dict[str, object], param: str) -> None:
    request = anthropic.MessagesRequest.model_validate(
        {"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "Hi"}], **extra}
    )
    with pytest.raises(anthropic.Unsupported) as refused:
        request.sampling()
    assert refused.value.param == param


def test_a_tool_use_stream_ends_its_text_block_and_sends_the_call_as_a_tool_use_block() -> None:
    tool = anthropic.ToolUseStream(anthropic.StreamEncoder("msg_1", "m"), [Tool(name="f")])
    raw = tool.start() + tool.token('{"name": "f", ') + tool.token('"arguments": {"x": 1}}') + tool.finish("stop", 3, 9)
    events = [json.loads(block.split("\n")[1][6:]) for block in raw.decode().strip().split("\n\n")]
    assert [event["type"] for event in events] == [
        "message_start",
        "content_block_start",
        "content_block_stop",
        "content_block_start",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    assert events[3]["content_block"]["type"] == "tool_use" and events[3]["content_block"]["name"] == "f"
    assert json.loads(events[4]["delta"]["partial_json"]) == {"x": 1}
    assert events[6]["delta"]["stop_reason"] == "tool_use"


def test_the_stream_is_anthropics_event_sequence() -> None:
    encoder = anthropic.StreamEncoder("msg_1", "m")
    raw = (encoder.start() + encoder.token("Hel") + encoder.token("lo") + encoder.finish("length", 3, 2)).decode()
    events = [(block.split("\n")[0][7:], json.loads(block.split("\n")[1][6:])) for block in raw.strip().split("\n\n")]
    assert [name for name, _ in events] == [
        "message_start",
        "content_block_start",
        "content_block_delta",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    assert "".join(data["delta"]["text"] for name, data in events if name == "content_block_delta") == "Hello"
    assert events[5][1]["delta"]["stop_reason"] == "max_tokens" and events[5][1]["usage"]["output_tokens"] == 2
    assert anthropic.message("msg_1", "m", "Hi", "stop", 3, 1)["stop_reason"] == "end_turn"
    assert anthropic.error(404, "no such model")["error"]["type"] == "not_found_error"
