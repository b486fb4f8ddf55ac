"""OpenAI-compatible request bodies, and the response and stream shapes the official client expects.

The stream encoders are shared: a worker asked for OpenAI's wire format writes these bytes itself, so the queen
passes them through without parsing each event. No I/O here.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from rbee.api import images
from rbee.api import logprobs as lp
from rbee.api.wire import ChatImage, ChatMessage, Unsupported, refuse_unserved


class StreamOptions(BaseModel):
    include_usage: bool = False


NO_OPS = frozenset({"user", "metadata", "store", "service_tier", "parallel_tool_calls"})
"""Fields clients send that change nothing rbee does: accepted, documented, and not acted on (`user` and
`metadata` label a request for the caller's own bookkeeping; `store` would keep it, which rbee never does)."""

NOT_YET = {
    "functions": "the legacy functions field is not served; send tools",
    "function_call": "the legacy function_call field is not served; send tool_choice",
    "audio": "audio output is not served",
    "modalities": "only text output is served",
    "prediction": "predicted outputs are not served",
    "suffix": "suffix (fill-in-the-middle) is not served yet",
    "echo": "echo is not served",
    "best_of": "best_of is not served",
}
"""Fields that would change the answer and that rbee does not serve: refused by name (with their neutral value
they are accepted), never silently ignored."""

_NEUTRAL: dict[str, tuple[Any, ...]] = {
    "functions": (None, []),
    "modalities": (None, ["text"]),
    "echo": (None, False),
    "best_of": (None, 1),
    "suffix": (None, ""),
}


class CompletionBase(BaseModel):
    model_config = ConfigDict(extra="allow")

    def refuse_unserved(self) -> None:
        """Raise Unsupported for the first field that would change the answer and is not served, or is unknown."""
        refuse_unserved(self.model_extra or {}, NO_OPS, NOT_YET, _NEUTRAL)

    model: str
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: Annotated[int, Field(ge=1)] | None = None
    max_completion_tokens: Annotated[int, Field(ge=1)] | None = None
    temperature: Annotated[float, Field(ge=0, le=2)] = 0.7
    top_p: Annotated[float, Field(gt=0, le=1)] = 0.95
    top_k: Annotated[int, Field(ge=0)] = 40
    repeat_penalty: Annotated[float, Field(gt=0)] = 1.1
    stop: str | list[str] | None = None
    seed: int | None = None
    n: Annotated[int, Field(ge=1, le=8)] = 1
    """Answers to give (choices), each a generation of its own; at most 8."""
    presence_penalty: Annotated[float, Field(ge=-2, le=2)] | None = None
    frequency_penalty: Annotated[float, Field(ge=-2, le=2)] | None = None
    logit_bias: Annotated[dict[str, Annotated[float, Field(ge=-100, le=100)]], Field(max_length=300)] | None = None

    response_format: dict[str, Any] | None = None

    def constraint(self) -> dict[str, Any] | None:
        """`response_format` as rbee's constraint: text (none), json_object, or json_schema with its schema;
        Unsupported names what is wrong with it."""
        shape = self.response_format or {"type": "text"}
        kind = shape.get("type")
        if kind == "text":
            return None
        if kind == "json_object":
            return {"kind": "json"}
        if kind == "json_schema":
            block = shape.get("json_schema")
            schema = block.get("schema") if isinstance(block, dict) else None
            if not isinstance(schema, dict):
                raise Unsupported(
                    "response_format", "response_format json_schema needs json_schema.schema, a JSON Schema object"
                )
            return {"kind": "json_schema", "json_schema": schema}
        raise Unsupported(
            "response_format", f"response_format type {kind!r} is not one of text, json_object, json_schema"
        )

    def sampling(self) -> dict[str, Any]:
        stop = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        return {
            "constraint": self.constraint(),
            "max_tokens": self.max_completion_tokens or self.max_tokens or 256,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "top_k": self.top_k,
            "repeat_penalty": self.repeat_penalty,
            "stop": stop,
            "seed": self.seed,
            "presence_penalty": self.presence_penalty or 0.0,
            "frequency_penalty": self.frequency_penalty or 0.0,
            "logit_bias": self.token_biases(),
            "logprobs": self.logprob_count(),
        }

    def logprob_count(self) -> int | None:
        """How many alternatives to report with each token's log probability; None: no logprobs."""
        return None

    def token_biases(self) -> list[tuple[int, float]]:
        """`logit_bias`, whose keys are token ids written as strings, as (id, bias) pairs."""
        pairs = []
        for token, bias in (self.logit_bias or {}).items():
            if not token.isdigit():
                raise Unsupported("logit_bias", f"logit_bias keys are token ids (digits), not {token!r}")
            pairs.append((int(token), bias))
        return pairs


class TextPart(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["text"]
    text: str


class OtherPart(BaseModel):
    """A part rbee does not take (image_url, input_audio, file ...); named in the refusal."""

    model_config = ConfigDict(extra="allow")
    type: str


class Message(BaseModel):
    """An OpenAI chat message: its content a string or a list of parts (what most SDKs and agent frameworks
    send); text parts are joined in order."""

    model_config = ConfigDict(extra="allow")
    role: Literal["system", "user", "assistant", "tool", "developer"]
    content: str | list[TextPart | OtherPart] | None = ""


class ChatRequest(CompletionBase):
    messages: Annotated[list[Message], Field(min_length=1)]
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    logprobs: bool | None = None
    top_logprobs: Annotated[int, Field(ge=0, le=20)] | None = None

    def logprob_count(self) -> int | None:
        if self.top_logprobs and not self.logprobs:
            raise Unsupported("top_logprobs", "top_logprobs needs logprobs: true")
        return (self.top_logprobs or 0) if self.logprobs else None

    def constraint(self) -> dict[str, Any] | None:
        """With tools (and tool_choice not `none`): a tool_call constraint, the answer then a call of one of them
        (`required`, or a function named) or text (`auto`, the default)."""
        answer_shape = super().constraint()
        if not self.tools or self.tool_choice == "none":
            return answer_shape
        if answer_shape is not None:
            raise Unsupported("response_format", "response_format and tools cannot be combined; send one of them")
        tools = [_tool(index, tool) for index, tool in enumerate(self.tools)]
        choice = self.tool_choice or "auto"
        if choice in ("auto", "required"):
            return {"kind": "tool_call", "tools": tools, "required": choice == "required"}
        named = choice.get("function", {}).get("name") if isinstance(choice, dict) else None
        chosen = [tool for tool in tools if tool["name"] == named]
        if not chosen:
            raise Unsupported(
                "tool_choice", f"tool_choice must be none, auto, required or one of the tools by name, not {choice!r}"
            )
        return {"kind": "tool_call", "tools": chosen, "required": True}

    def rbee_messages(self, sees: bool = False) -> list[ChatMessage]:
        """The messages as rbee's workers take them: text parts joined in order, and `image_url` parts as images
        among them when the model sees (`sees`: it has a projector); Unsupported names the first part it cannot
        take."""
        converted, seen = [], 0
        for index, message in enumerate(self.messages):
            content, pictures = message.content, []
            if isinstance(content, list):
                texts: list[str] = []
                for number, part in enumerate(content):
                    if isinstance(part, TextPart):
                        texts.append(part.text)
                        continue
                    pictures.append(self._image(part, sees, len("".join(texts)), f"messages.{index}.content.{number}"))
                content = "".join(texts)
            seen += len(pictures)
            images.within_limit(seen, "messages")
            extra: dict[str, Any] = {"images": tuple(pictures)} if pictures else {}
            extra |= {name: value for name, value in (message.model_extra or {}).items() if name == "name"}
            calls = (message.model_extra or {}).get("tool_calls")
            if message.role == "assistant" and calls:  # what it called, written as rbee's workers write a call
                content = "".join(_call_text(index, call) for call in calls)
            converted.append(ChatMessage(role=message.role, content=content, **extra))
        return converted

    def _image(self, part: OtherPart, sees: bool, at: int, param: str) -> ChatImage:
        where = images.written(param)
        if part.type != "image_url":
            raise Unsupported(param, f"{where} is a part of type {part.type}; rbee takes text and image_url parts")
        if not sees:
            raise images.unseen(param, self.model, where)
        url = (part.model_extra or {}).get("image_url")
        url = url.get("url") if isinstance(url, dict) else url
        if not isinstance(url, str):
            raise Unsupported(param, f"{where} must be {{type: image_url, image_url: {{url: ...}}}}")
        return images.from_url(url, at, param)


def _tool(index: int, tool: Any) -> dict[str, Any]:
    function = tool.get("function") if isinstance(tool, dict) and tool.get("type") == "function" else None
    if not isinstance(function, dict) or not isinstance(function.get("name"), str):
        raise Unsupported(f"tools.{index}", f"tools[{index}] must be {{type: function, function: {{name, ...}}}}")
    parameters = function.get("parameters") or {"type": "object"}
    if not isinstance(parameters, dict):
        raise Unsupported(f"tools.{index}", f"tools[{index}].function.parameters must be a JSON Schema object")
    return {"name": function["name"], "description": str(function.get("description") or ""), "parameters": parameters}


def _call_text(index: int, call: Any) -> str:
    function = call.get("function") if isinstance(call, dict) else None
    if not isinstance(function, dict):
        raise Unsupported(
            f"messages.{index}.tool_calls", f"messages[{index}].tool_calls holds a call without a function"
        )
    try:
        arguments = json.loads(function.get("arguments") or "{}")
    except ValueError:
        raise Unsupported(
            f"messages.{index}.tool_calls", f"messages[{index}].tool_calls: arguments must be a JSON string"
        ) from None
    return json.dumps({"name": function.get("name"), "arguments": arguments})


def tool_calls(request_id: str, name: str, arguments: dict[str, Any]) -> list[dict[str, Any]]:
    """OpenAI's `tool_calls` for one call (its arguments as a JSON string, as the API has them)."""
    call_id = f"call_{request_id.rsplit('-', 1)[-1][:24]}"
    return [{"id": call_id, "type": "function", "function": {"name": name, "arguments": json.dumps(arguments)}}]


class CompletionRequest(CompletionBase):
    prompt: str | list[str]
    logprobs: Annotated[int, Field(ge=0, le=20)] | None = None
    """The legacy API's logprobs: how many alternatives to list with each token (0: only its own)."""

    def logprob_count(self) -> int | None:
        return self.logprobs

    @field_validator("prompt")
    @classmethod
    def _one_prompt(cls, value: str | list[str]) -> str | list[str]:
        if isinstance(value, list) and len(value) != 1:
            raise ValueError("rbee serves one prompt per request; send a string or a list of one")
        return value

    @property
    def text(self) -> str:
        return self.prompt if isinstance(self.prompt, str) else self.prompt[0]


def new_id(prefix: str) -> str:
    return f"{prefix}-{os.urandom(12).hex()}"


def error(
    message: str, kind: str = "invalid_request_error", code: str | None = None, param: str | None = None
) -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def chat_chunk(
    request_id: str,
    model: str,
    created: int,
    delta: dict[str, Any],
    finish: str | None,
    usage_block: dict[str, int] | None = None,
    logprobs: dict[str, Any] | None = None,
) -> dict[str, Any]:
    return {
        "id": request_id,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "choices": [{"index": 0, "delta": delta, "logprobs": logprobs, "finish_reason": finish}]
        if usage_block is None
        else [],
        **({"usage": usage_block} if usage_block is not None else {}),
    }


def chat_response(
    request_id: str,
    model: str,
    text: str,
    finish: str,
    usage_block: dict[str, int],
    call: tuple[str, dict[str, Any]] | None = None,
    logprobs: Sequence[lp.Entry] | None = None,
) -> dict[str, Any]:
    """The whole answer; with `call` (a tool call it is), as tool_calls with finish_reason tool_calls."""
    message: dict[str, Any] = {"role": "assistant", "content": text}
    if call is not None:
        message = {"role": "assistant", "content": None, "tool_calls": tool_calls(request_id, *call)}
        finish = "tool_calls"
    return {
        "id": request_id,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": message,
                "logprobs": lp.chat(logprobs) if logprobs is not None else None,
                "finish_reason": finish,
            }
        ],
        "usage": usage_block,
    }


def completion_chunk(
    request_id: str,
    model: str,
    created: int,
    text: str,
    finish: str | None,
    usage_block: dict[str, int] | None = None,
    logprobs: dict[str, Any] | None = None,
) -> dict[str, Any]:
    return {
        "id": request_id,
        "object": "text_completion",
        "created": created,
        "model": model,
        "choices": [{"index": 0, "text": text, "logprobs": logprobs, "finish_reason": finish}]
        if usage_block is None
        else [],
        **({"usage": usage_block} if usage_block is not None else {}),
    }


def completion_response(
    request_id: str,
    model: str,
    text: str,
    finish: str,
    usage_block: dict[str, int],
    logprobs: Sequence[lp.Entry] | None = None,
) -> dict[str, Any]:
    return {
        "id": request_id,
        "object": "text_completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "text": text,
                "logprobs": lp.completion(logprobs) if logprobs is not None else None,
                "finish_reason": finish,
            }
        ],
        "usage": usage_block,
    }


def openai_finish(reason: str) -> str:
    return reason if reason in ("length", "tool_calls") else "stop"
