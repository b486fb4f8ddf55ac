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
        ({"input": "Hi", "tools": [{"type": "function", "name": "f"}]}, "tools"),
        ({"input": "Hi", "text": {"format": {"type": "xml"}}}, "text.format"),
        ({"input": "Hi", "text": {"format": {"type": "json_schema"}}}, "text.format"),
        ({"input": [{"type": "function_call_output", "call_id": "c", "output": "x"}]}, "input.0"),
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
