"""What agent clients and chat front ends send, through the queen to real SmolLM2 workers, with the official
openai and anthropic clients: content parts, refusals by name, structured outputs, tool calls, logprobs,
penalties and logit_bias, n choices, Anthropic Messages (tools, count_tokens, errors) and OpenAI Responses."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import jsonschema
import openai
import pytest

from tests.fleet import Fleet, make_fleet
from tests.models import SMOLLM2_SOURCE

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    fleet = make_fleet(tmp_path_factory.mktemp("agents"), SMOLLM2_SOURCE, replicas=2)
    applied = fleet.rbee("apply", str(fleet.spec), "--yes")
    assert applied.returncode == 0, applied.stdout + applied.stderr
    yield fleet
    fleet.rbee("destroy", str(fleet.spec), "--yes")


@pytest.fixture
def client(fleet: Fleet) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=f"{fleet.queen_url}/v1", api_key=fleet.api_key, max_retries=0) as client:
        yield client


def test_content_parts_are_joined_and_answer_as_a_string_does(client: openai.OpenAI) -> None:
    """What most SDKs and agent frameworks send: content as a list of text parts."""
    asked = {"model": "smollm2", "max_tokens": 8, "temperature": 0, "seed": 3}
    as_parts = client.chat.completions.create(
        messages=[
            {"role": "user", "content": [{"type": "text", "text": "Name a "}, {"type": "text", "text": "colour."}]}
        ],
        user="someone",  # a documented no-op
        **asked,
    )
    as_text = client.chat.completions.create(messages=[{"role": "user", "content": "Name a colour."}], **asked)
    assert as_parts.choices[0].message.content == as_text.choices[0].message.content


@pytest.mark.parametrize(
    ("extra", "param", "words"),
    [
        ({"tools": [{"type": "retrieval"}]}, "tools.0", "must be {type: function"),
        (
            {"tools": [{"type": "function", "function": {"name": "f"}}], "tool_choice": {"function": {"name": "g"}}},
            "tool_choice",
            "one of the tools by name",
        ),
        ({"response_format": {"type": "xml"}}, "response_format", "is not one of text, json_object, json_schema"),
        ({"top_logprobs": 2}, "top_logprobs", "top_logprobs needs logprobs: true"),
        ({"logit_bias": {"hello": 1}}, "logit_bias", "logit_bias keys are token ids"),
        ({"logit_bias": {"99999999": 1}}, "logit_bias", "the model's tokens are 0 to 49151"),
        ({"n": 9}, "n", "less than or equal to 8"),
        ({"extra_body_typo": 1}, "extra_body_typo", "rbee does not know this field"),
    ],
)
def test_what_is_not_served_is_refused_by_name_not_ignored(
    client: openai.OpenAI, extra: dict[str, object], param: str, words: str
) -> None:
    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(
            model="smollm2", messages=[{"role": "user", "content": "Hi"}], max_tokens=2, extra_body=extra
        )
    assert refused.value.status_code == 400
    body = refused.value.body
    assert isinstance(body, dict) and body.get("param") == param and words in str(body.get("message")), body


def test_structured_outputs_follow_the_schema_through_the_openai_client(client: openai.OpenAI) -> None:
    schema = {
        "type": "object",
        "properties": {"colour": {"enum": ["red", "green", "blue"]}, "count": {"type": "integer", "minimum": 1}},
        "required": ["colour", "count"],
        "additionalProperties": False,
    }
    answer = client.chat.completions.create(
        model="smollm2",
        messages=[{"role": "user", "content": "Pick a colour and a count, as JSON."}],
        max_tokens=60,
        seed=4,
        response_format={"type": "json_schema", "json_schema": {"name": "pick", "schema": schema, "strict": True}},
    )
    chosen = json.loads(answer.choices[0].message.content or "")
    assert chosen["colour"] in ("red", "green", "blue") and chosen["count"] >= 1
    assert set(chosen) == {"colour", "count"}
    streamed = "".join(
        chunk.choices[0].delta.content or ""
        for chunk in client.chat.completions.create(
            model="smollm2",
            messages=[{"role": "user", "content": "Describe yourself."}],
            max_tokens=80,
            seed=4,
            stream=True,
            response_format={"type": "json_object"},
        )
        if chunk.choices
    )
    assert isinstance(json.loads(streamed), dict), streamed


WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city now.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "maxLength": 30}},
            "required": ["city"],
            "additionalProperties": False,
        },
    },
}


def test_tool_calls_through_the_openai_client_whole_streamed_and_answered(client: openai.OpenAI) -> None:
    """An agent's loop: the model must call the tool (whole, then streamed), the client runs it and sends the
    result back, and the model answers in text or calls again, never with broken JSON."""
    asked = [{"role": "user", "content": "What is the weather in Paris?"}]
    whole = client.chat.completions.create(
        model="smollm2", messages=asked, tools=[WEATHER_TOOL], tool_choice="required", max_tokens=60, seed=1
    )
    choice = whole.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.tool_calls, choice
    call = choice.message.tool_calls[0]
    assert call.function.name == "get_weather" and isinstance(json.loads(call.function.arguments)["city"], str)
    streamed = list(
        client.chat.completions.create(
            model="smollm2",
            messages=asked,
            tools=[WEATHER_TOOL],
            tool_choice="required",
            max_tokens=60,
            seed=1,
            stream=True,
        )
    )
    deltas = [chunk.choices[0] for chunk in streamed if chunk.choices]
    calls = [part for choice in deltas for part in (choice.delta.tool_calls or [])]
    assert [part.function.name for part in calls] == ["get_weather"] and deltas[-1].finish_reason == "tool_calls"
    assert json.loads(calls[0].function.arguments or "") == json.loads(call.function.arguments)
    turn = [
        *asked,
        {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
        {"role": "tool", "tool_call_id": call.id, "content": '{"temperature_c": 18, "sky": "clear"}'},
    ]
    answer = client.chat.completions.create(model="smollm2", messages=turn, tools=[WEATHER_TOOL], max_tokens=40, seed=2)
    reply = answer.choices[0]
    assert (reply.finish_reason == "tool_calls") == bool(reply.message.tool_calls)
    assert reply.message.tool_calls or (reply.message.content or "").strip()


def test_an_image_part_is_refused_naming_the_part(client: openai.OpenAI) -> None:
    content = [{"type": "text", "text": "What is this?"}, {"type": "image_url", "image_url": {"url": "data:,"}}]
    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(model="smollm2", messages=[{"role": "user", "content": content}], max_tokens=2)
    body = refused.value.body
    assert isinstance(body, dict) and body.get("param") == "messages.0.content.1", body
    assert "is an image and the model smollm2 sees no images; give the model an mmproj" in str(body.get("message"))


def test_a_prompt_past_the_context_is_the_clients_mistake(client: openai.OpenAI) -> None:
    """Counted with the model's tokenizer before anything streams: 400 naming the field, not a 502 that clients
    retry (three times the load)."""
    long = "word " * 5000  # ~5,000 tokens; SmolLM2 runs with a 4,096-token context here
    for stream in (False, True):
        with pytest.raises(openai.BadRequestError) as refused:
            created = client.completions.create(model="smollm2", prompt=long, max_tokens=2, stream=stream)
            if stream:
                list(created)
        body = refused.value.body
        assert isinstance(body, dict) and body.get("param") == "prompt", body
        assert body.get("code") == "context_length_exceeded" and "context holds 4096" in str(body.get("message"))
    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(model="smollm2", messages=[{"role": "user", "content": long}], max_tokens=2)
    assert isinstance(refused.value.body, dict) and refused.value.body.get("param") == "messages"
    fine = client.completions.create(model="smollm2", prompt="Hello", max_tokens=2)
    assert fine.choices[0].text is not None


def test_logprobs_through_the_openai_client_streamed_and_whole(client: openai.OpenAI) -> None:
    """Chat and completions, whole and streamed: one entry per answer token with its alternatives, the same
    at temperature 0 either way, and their bytes make the answer."""
    asked: dict[str, Any] = {"model": "smollm2", "max_tokens": 8, "temperature": 0, "seed": 1}
    chat = [{"role": "user", "content": "Name a colour."}]
    whole = client.chat.completions.create(**asked, messages=chat, logprobs=True, top_logprobs=2)  # type: ignore[call-overload]
    entries = whole.choices[0].logprobs.content
    assert len(entries) == whole.usage.completion_tokens and all(len(e.top_logprobs) == 2 for e in entries)
    assert bytes(b for e in entries for b in e.bytes).decode() == whole.choices[0].message.content
    streamed = [
        entry
        for chunk in client.chat.completions.create(**asked, messages=chat, logprobs=True, top_logprobs=2, stream=True)  # type: ignore[call-overload]
        if chunk.choices and chunk.choices[0].logprobs
        for entry in chunk.choices[0].logprobs.content
    ]
    assert [(e.token, round(e.logprob, 3)) for e in streamed] == [(e.token, round(e.logprob, 3)) for e in entries]
    legacy = client.completions.create(**asked, prompt="Colours: red, green,", logprobs=3)
    block = legacy.choices[0].logprobs
    assert block is not None and len(block.tokens or []) == legacy.usage.completion_tokens  # type: ignore[union-attr]
    assert "".join(block.tokens or []) == legacy.choices[0].text
    assert block.text_offset == [sum(map(len, (block.tokens or [])[:i])) for i in range(len(block.tokens or []))]
    assert all(len(top) == 3 for top in block.top_logprobs or [])


def test_penalties_and_logit_bias_change_the_answer(client: openai.OpenAI, smollm2: Path) -> None:
    import llama_cpp

    asked: dict[str, Any] = {"model": "smollm2", "prompt": "one one one one one", "max_tokens": 16, "temperature": 0}
    greedy = {"repeat_penalty": 1.0}
    plain = client.completions.create(**asked, extra_body=greedy).choices[0].text
    for penalty in ({"frequency_penalty": 2.0}, {"presence_penalty": 2.0}):
        penalized = client.completions.create(**asked, **penalty, extra_body=greedy).choices[0].text
        assert penalized != plain, penalty
    vocab = llama_cpp.Llama(str(smollm2), vocab_only=True, verbose=False)
    first = vocab.tokenize(plain.encode(), add_bos=False)[0]
    banned = client.completions.create(**asked, logit_bias={str(first): -100}, extra_body=greedy).choices[0].text
    assert vocab.tokenize(banned.encode(), add_bos=False)[0] != first, (plain, banned)


def test_n_choices_whole_and_streamed_through_the_openai_client(client: openai.OpenAI) -> None:
    """n=3 seeded: three answers, choice i as the seed plus i would answer alone, the same streamed (each
    chunk names its choice) as whole; the prompt is counted once and every answer's tokens."""
    asked: dict[str, Any] = {
        "model": "smollm2",
        "messages": [{"role": "user", "content": "Write a word."}],
        "max_tokens": 10,
        "temperature": 1.0,
        "seed": 11,
    }
    whole = client.chat.completions.create(**asked, n=3)
    texts = [choice.message.content for choice in sorted(whole.choices, key=lambda c: c.index)]
    assert [c.index for c in whole.choices] == [0, 1, 2] and len(set(texts)) > 1, texts
    alone = client.chat.completions.create(**{**asked, "seed": 12})
    assert alone.choices[0].message.content == texts[1]
    assert whole.usage.prompt_tokens == alone.usage.prompt_tokens
    assert whole.usage.completion_tokens == sum(
        client.chat.completions.create(**{**asked, "seed": 11 + i}).usage.completion_tokens for i in range(3)
    )
    streamed = ["", "", ""]
    finished = [None, None, None]
    usage = None
    for chunk in client.chat.completions.create(**asked, n=3, stream=True, stream_options={"include_usage": True}):
        usage = chunk.usage or usage
        for choice in chunk.choices:
            streamed[choice.index] += choice.delta.content or ""
            finished[choice.index] = choice.finish_reason or finished[choice.index]
    assert streamed == texts and all(finished)
    assert usage is not None and usage.completion_tokens == whole.usage.completion_tokens
    legacy = client.completions.create(model="smollm2", prompt="Colours:", max_tokens=6, n=2, seed=3)
    assert [c.index for c in legacy.choices] == [0, 1]


def test_the_anthropic_client_counts_tokens(fleet: Fleet) -> None:
    with anthropic.Anthropic(base_url=fleet.queen_url, api_key=fleet.api_key, max_retries=0) as claude:
        short = claude.messages.count_tokens(model="smollm2", messages=[{"role": "user", "content": "Hi"}])
        longer = claude.messages.count_tokens(
            model="smollm2", messages=[{"role": "user", "content": "Hi there, how are you today?"}]
        )
        # SmolLM2's template writes its own system prompt when none is given, so a short one counts fewer.
        terse = claude.messages.count_tokens(
            model="smollm2", system="Be terse.", messages=[{"role": "user", "content": "Hi"}]
        )
        assert 0 < terse.input_tokens < short.input_tokens < longer.input_tokens
        answer = claude.messages.create(model="smollm2", max_tokens=2, messages=[{"role": "user", "content": "Hi"}])
        assert answer.usage.input_tokens == short.input_tokens
        with pytest.raises(anthropic.NotFoundError):
            claude.messages.count_tokens(model="nope", messages=[{"role": "user", "content": "Hi"}])


def test_the_anthropic_client_gets_messages_streamed_and_whole(fleet: Fleet) -> None:
    """Anthropic's own Python client against the queen (x-api-key): a system prompt, two turns, stop sequences;
    the stream's text deltas joined equal the whole answer at temperature 0."""
    with anthropic.Anthropic(base_url=fleet.queen_url, api_key=fleet.api_key, max_retries=0) as claude:
        asked: dict[str, Any] = {
            "model": "smollm2",
            "max_tokens": 12,
            "extra_body": {"temperature": 0},  # this client version no longer types it; the API takes it
            "system": "You are terse.",
            "messages": [
                {"role": "user", "content": "Say hello."},
                {"role": "assistant", "content": "Hello."},
                {"role": "user", "content": [{"type": "text", "text": "Now count to three."}]},
            ],
        }
        whole = claude.messages.create(**asked)
        assert whole.type == "message" and whole.role == "assistant" and whole.content[0].type == "text"
        assert whole.stop_reason in ("end_turn", "max_tokens") and whole.usage.output_tokens > 0
        with claude.messages.stream(**asked) as stream:
            streamed = "".join(stream.text_stream)
            final = stream.get_final_message()
        assert streamed == whole.content[0].text
        assert final.stop_reason == whole.stop_reason and final.usage.output_tokens == whole.usage.output_tokens
        cut = claude.messages.create(**{**asked, "max_tokens": 2})
        assert cut.stop_reason == "max_tokens"


def test_the_anthropic_client_uses_tools_whole_streamed_and_with_results(fleet: Fleet) -> None:
    weather = {
        "name": "get_weather",
        "description": "The weather in a city now.",
        "input_schema": WEATHER_TOOL["function"]["parameters"],  # type: ignore[index]
    }
    with anthropic.Anthropic(base_url=fleet.queen_url, api_key=fleet.api_key, max_retries=0) as claude:
        asked: dict[str, Any] = {
            "model": "smollm2",
            "max_tokens": 60,
            "tools": [weather],
            "tool_choice": {"type": "any"},
            "messages": [{"role": "user", "content": "What is the weather in Lisbon?"}],
        }
        whole = claude.messages.create(**asked)
        assert whole.stop_reason == "tool_use" and whole.content[0].type == "tool_use", whole
        use = whole.content[0]
        assert use.name == "get_weather" and isinstance(use.input["city"], str)  # type: ignore[index]
        with claude.messages.stream(**asked) as stream:
            final = stream.get_final_message()
        assert final.stop_reason == "tool_use" and any(block.type == "tool_use" for block in final.content)
        turn = [
            *asked["messages"],
            {"role": "assistant", "content": [use.model_dump()]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id, "content": "18 C, clear"}]},
        ]
        answer = claude.messages.create(**{**asked, "tool_choice": {"type": "auto"}, "messages": turn})
        assert answer.stop_reason in ("end_turn", "max_tokens", "tool_use") and answer.content


def test_the_anthropic_client_gets_errors_in_anthropic_shape(fleet: Fleet) -> None:
    with anthropic.Anthropic(base_url=fleet.queen_url, api_key=fleet.api_key, max_retries=0) as claude:
        with pytest.raises(anthropic.NotFoundError) as missing:
            claude.messages.create(model="nope", max_tokens=2, messages=[{"role": "user", "content": "hi"}])
        assert missing.value.body == {
            "type": "error",
            "error": {"type": "not_found_error", "message": "the model nope does not exist; this fleet serves smollm2"},
        }
        tool = {"name": "f", "description": "x"}  # no input_schema
        with pytest.raises(anthropic.BadRequestError, match=r"tools\[0\] needs a name and an input_schema"):
            claude.messages.create(
                model="smollm2", max_tokens=2, messages=[{"role": "user", "content": "hi"}], tools=[tool]
            )
        image = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AA=="}}
        with pytest.raises(
            anthropic.BadRequestError, match=r"messages\.0\.content\.0 is an image and the model smollm2 sees no images"
        ):
            claude.messages.create(model="smollm2", max_tokens=2, messages=[{"role": "user", "content": [image]}])
    with (
        anthropic.Anthropic(base_url=fleet.queen_url, api_key="wrong", max_retries=0) as stranger,
        pytest.raises(anthropic.AuthenticationError),
    ):
        stranger.messages.create(model="smollm2", max_tokens=2, messages=[{"role": "user", "content": "hi"}])


def test_responses_function_tools_whole_streamed_and_answered(client: openai.OpenAI) -> None:
    """The Responses API's function tools: a required call is a function_call item with arguments that validate,
    the same streamed (its arguments events and final response), and the call's output sent back is answered."""
    function = WEATHER_TOOL["function"]
    assert isinstance(function, dict)
    tool = {"type": "function", **function}
    asked: dict[str, Any] = {
        "model": "smollm2",
        "input": [{"role": "user", "content": "What is the weather in Oslo?"}],
        "tools": [tool],
        "tool_choice": "required",
        "max_output_tokens": 40,
        "temperature": 0,
    }
    whole = client.responses.create(**asked)
    [call] = whole.output
    assert call.type == "function_call" and call.name == "get_weather" and whole.status == "completed"
    jsonschema.validate(json.loads(call.arguments), function["parameters"])
    arguments, final = None, None
    for event in client.responses.create(**asked, stream=True):
        if event.type == "response.function_call_arguments.done":
            arguments = event.arguments
        elif event.type == "response.completed":
            final = event.response
    assert arguments == call.arguments and final is not None and final.output[0].type == "function_call"
    turn = [
        *asked["input"],
        {"type": "function_call", "call_id": call.call_id, "name": call.name, "arguments": call.arguments},
        {"type": "function_call_output", "call_id": call.call_id, "output": '{"temperature_c": 18}'},
    ]
    answered = client.responses.create(**{**asked, "input": turn, "tool_choice": "none"})
    assert answered.output[0].type == "message" and answered.output_text


def test_the_responses_api_answers_whole_and_streamed(client: openai.OpenAI) -> None:
    """OpenAI's Responses API through the official client, stateless: instructions and message input; the
    stream's deltas joined equal the whole answer at temperature 0, and its final event carries the same."""
    asked: dict[str, Any] = {
        "model": "smollm2",
        "instructions": "You are terse.",
        "input": [
            {"role": "user", "content": "Say hello."},
            {"role": "assistant", "content": [{"type": "output_text", "text": "Hello."}]},
            {"role": "user", "content": [{"type": "input_text", "text": "Now count to three."}]},
        ],
        "max_output_tokens": 12,
        "temperature": 0,
    }
    whole = client.responses.create(**asked)
    assert whole.object == "response" and whole.output_text and whole.usage and whole.usage.output_tokens > 0
    deltas, final = [], None
    for event in client.responses.create(**asked, stream=True):
        if event.type == "response.output_text.delta":
            deltas.append(event.delta)
        elif event.type in ("response.completed", "response.incomplete"):
            final = event.response
    assert "".join(deltas) == whole.output_text
    assert final is not None and final.output_text == whole.output_text and final.status == whole.status
    cut = client.responses.create(model="smollm2", input="Write a long story.", max_output_tokens=2)
    assert (
        cut.status == "incomplete" and cut.incomplete_details and cut.incomplete_details.reason == "max_output_tokens"
    )
    with pytest.raises(openai.BadRequestError) as refused:
        client.responses.create(model="smollm2", input="Hi", previous_response_id="resp_earlier")
    body = refused.value.body
    assert isinstance(body, dict) and body.get("param") == "previous_response_id" and "stateless" in str(body)
