"""Answers held to a shape: the tools a model may call, the constraint an engine holds an answer to (a JSON
object, a JSON Schema, or a call of one of the tools), the call an answer is, and a stream that holds a call
back until it is whole so it can go out in the client's shape. No I/O here."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

if TYPE_CHECKING:
    from rbee.api.wire import Encoder


class Tool(BaseModel):
    """A function the model may call: its name, what it does, and a JSON Schema of its arguments."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")]
    description: Annotated[str, Field(max_length=4096)] = ""
    parameters: dict[str, Any] = Field(default_factory=lambda: {"type": "object"})


class Constraint(BaseModel):
    """What the answer must be: a JSON object (`json`), JSON that validates against `json_schema`, or a call of
    one of `tools` (`tool_call`; with `required` nothing else, without it free text or a call). The engine masks,
    at every token, what cannot continue a valid answer (OpenAI's structured outputs and tool calls)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["json", "json_schema", "tool_call"]
    json_schema: dict[str, Any] | None = None
    tools: Annotated[tuple[Tool, ...], Field(max_length=128)] = ()
    required: bool = False

    @model_validator(mode="after")
    def _schema_with_its_kind(self) -> Constraint:
        if (self.kind == "json_schema") != (self.json_schema is not None):
            raise ValueError("a json_schema constraint takes a schema, and only it does")
        if (self.kind == "tool_call") != bool(self.tools):
            raise ValueError("a tool_call constraint takes tools, and only it does")
        return self

    def call_schema(self) -> dict[str, Any]:
        """The JSON Schema of a call: `{"name": one of the tools, "arguments": that tool's parameters}`."""
        return {
            "anyOf": [
                {
                    "type": "object",
                    "properties": {"name": {"const": tool.name}, "arguments": tool.parameters},
                    "required": ["name", "arguments"],
                    "additionalProperties": False,
                }
                for tool in self.tools
            ]
        }


def call_in(text: str, tools: Sequence[Tool]) -> tuple[str, dict[str, Any]] | None:
    """The tool call an answer is (the name of one of `tools` and its arguments), or None when it is text or an
    unfinished call (one cut by max_tokens)."""
    if not text.lstrip().startswith("{"):
        return None
    try:
        call = json.loads(text)
    except ValueError:
        return None
    if not isinstance(call, dict) or not isinstance(call.get("arguments"), dict):
        return None
    if call.get("name") not in {tool.name for tool in tools}:
        return None
    return str(call["name"]), call["arguments"]


class HeldCall:
    """A stream whose answer may be a tool call: text streams as it comes once it cannot be a call (it does not
    begin with "{"); a call is held until it is complete and goes out in the client's shape (`call`). A call cut
    short (max_tokens) goes out as the text it is."""

    def __init__(self, inner: Encoder, tools: Sequence[Tool]) -> None:
        self.inner, self.tools = inner, tools
        self.held = ""
        self.calling: bool | None = None
        """None until the answer's first character shows whether it is a call."""
        self.held_logprobs: list[dict[str, Any]] | None = None

    def call(self, name: str, arguments: dict[str, Any], prompt_tokens: int, completion_tokens: int) -> bytes:
        raise NotImplementedError

    def start(self) -> bytes:
        return self.inner.start()

    def token(self, text: str, logprobs: Sequence[dict[str, Any]] | None = None) -> bytes:
        if self.calling is False:
            return self.inner.token(text, logprobs)
        self.held += text
        if logprobs is not None:
            self.held_logprobs = [*(self.held_logprobs or ()), *logprobs]
        begun = self.held.lstrip()
        if self.calling is None and begun:
            self.calling = begun.startswith("{")
            if not self.calling:
                return self.inner.token(self.held, self.held_logprobs)
        return b""

    def finish(self, reason: str, prompt_tokens: int, completion_tokens: int) -> bytes:
        call = call_in(self.held, self.tools) if self.calling else None
        if call is None:
            out = self.inner.token(self.held, self.held_logprobs) if self.calling and self.held else b""
            return out + self.inner.finish(reason, prompt_tokens, completion_tokens)
        return self.call(*call, prompt_tokens, completion_tokens)

    def error(self, message: str, code: str) -> bytes:
        return self.inner.error(message, code)
