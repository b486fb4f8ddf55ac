"""api/responses.py as table cases: a Responses request to rbee's chat, what is refused by name, and the stream's
event sequence."""

from __future__ import annotations

import json

import pytest

from rbee.api import responses


def test_a_string_input_with_instructions_is_a_two_message_chat() -> None:
    request = responses.ResponsesRequest.model_validate(
        {"model": "m", "input": "Hi", "instructions": "Be brief.", "store": True, "user": "u"}
    )
    request.refuse_unserved()
    assert [(m.role, m.content) for m in request.chat()] == [("system", "Be brief."), ("user", "Hi")]


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"input": "Hi", "previous_response_id": "resp_1"}, "previous_response_id"),
        ({"input": "Hi", "tools": [{"type": "web_search"}]}, "tools.0"),
        (
            {"input": "Hi", "tools": [{"type": "function", "name": "f"}], "tool_choice": {"type": "function"}},
            "tool_choice",
        ),
        (
            {"input": "Hi", "tools": [{"type": "function", "name": "f"}], "text": {"format": {"type": "json_object"}}},
            "text.format",
        ),
        ({"input": "Hi", "text": {"format": {"type": "xml"}}}, "text.format"),
        ({"input": "Hi", "text": {"format": {"type": "json_schema"}}}, "text.format"),
        ({"input": [{"type": "reasoning", "summary": []}]}, "input.0"),
        (
            {"input": [{"type": "function_call", "call_id": "c", "name": "f", "arguments": "{nope"}]},
            "input.0.arguments",
        ),
        (
            {"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "data:,"}]}]},
            "input.0.content.0",
        ),
    ],
)
def test_what_is_not_served_is_named(body: dict[str, object], param: str) -> None:
    request = responses.ResponsesRequest.model_validate({"model": "m", **body})
    with pytest.raises(responses.Unsupported) as refused:
        request.refuse_unserved()
        request.chat()
    assert refused.value.param == param


def test_the_stream_is_the_responses_event_sequence() -> None:
    encoder = responses.StreamEncoder("resp_1", "m")
    raw = (encoder.start() + encoder.token("Hel") + encoder.token("lo") + encoder.finish("stop", 3, 2)).decode()
    events = [json.loads(block.split("\n")[1][6:]) for block in raw.strip().split("\n\n")]
    assert [event["type"] for event in events] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
        "response.output_text.delta",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert [event["sequence_number"] for event in events] == list(range(10))
    assert events[6]["text"] == "Hello" and events[-1]["response"]["usage"]["output_tokens"] == 2


WEATHER = {"type": "function", "name": "weather", "description": "Weather", "parameters": {"type": "object"}}


def test_function_tools_become_a_tool_call_constraint_and_calls_in_the_history_are_understood() -> None:
    history = [
        {"role": "user", "content": "Weather in Oslo?"},
        {"type": "function_call", "call_id": "call_1", "name": "weather", "arguments": '{"city": "Oslo"}'},
        {"type": "function_call_output", "call_id": "call_1", "output": '{"sky": "clear"}'},
    ]
    request = responses.ResponsesRequest.model_validate(
        {"model": "m", "input": history, "tools": [WEATHER], "tool_choice": "required"}
    )
    request.refuse_unserved()
    assert request.constraint() == {
        "kind": "tool_call",
        "tools": [{"name": "weather", "description": "Weather", "parameters": {"type": "object"}}],
        "required": True,
    }
    assert [(m.role, m.content) for m in request.chat()] == [
        ("user", "Weather in Oslo?"),
        ("assistant", '{"name": "weather", "arguments": {"city": "Oslo"}}'),
        ("tool", '{"sky": "clear"}'),
    ]
    named = request.model_copy(update={"tool_choice": {"type": "function", "name": "weather"}})
    assert named.constraint()["required"] is True  # type: ignore[index]
    assert request.model_copy(update={"tool_choice": "none"}).constraint() is None


def test_a_call_is_a_function_call_item_whole_and_streamed() -> None:
    whole = responses.response("resp_7", "m", "", "stop", 5, 4, call=("weather", {"city": "Oslo"}))
    assert whole["status"] == "completed"
    assert whole["output"] == [
        {
            "type": "function_call",
            "id": "fc_7",
            "call_id": "call_7",
            "name": "weather",
            "arguments": '{"city": "Oslo"}',
            "status": "completed",
        }
    ]
    from rbee.api.calls import Tool

    stream = responses.ToolCallStream(responses.StreamEncoder("resp_7", "m"), [Tool(name="weather")])
    raw = (
        stream.start() + stream.token('{"name": "weather", ') + stream.token('"arguments": {"city": "Oslo"}}')
    ).decode()
    raw += stream.finish("stop", 5, 4).decode()
    events = [json.loads(block.split("\n")[1][6:]) for block in raw.strip().split("\n\n")]
    assert [event["type"] for event in events] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert events[4]["arguments"] == '{"city": "Oslo"}' and events[-1]["response"]["output"] == whole["output"]
    text = responses.ToolCallStream(responses.StreamEncoder("resp_8", "m"), [Tool(name="weather")])
    said = (text.start() + text.token("Sunny.") + text.finish("stop", 5, 1)).decode()
    kinds = [json.loads(block.split("\n")[1][6:])["type"] for block in said.strip().split("\n\n")]
    assert kinds[2:5] == ["response.output_item.added", "response.content_part.added", "response.output_text.delta"]
