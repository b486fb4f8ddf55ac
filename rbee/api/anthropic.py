"""Anthropic's Messages API in rbee's terms (pure): a `POST /v1/messages` body to rbee's chat messages and
sampling options, rbee's answer to a Message, and a worker's tokens to Anthropic's stream events
(`message_start` ... `message_stop`), so that Claude Code and other Anthropic-speaking tools can use a local model.

Served: system (a string or text blocks), multi-turn user/assistant messages with text, tool_use and tool_result
blocks, max_tokens, stop_sequences, temperature, top_p, top_k, stream, tools with tool_choice (auto, any, tool,
none; on backends that hold answers to a grammar, see worker/tools.py); image blocks with a base64 source for a
model with a projector (api/images.py); metadata is a documented no-op. Refused by name (400): thinking, image
blocks for a model that sees none or by URL, and any other content block (document).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from rbee.api import images
from rbee.api.calls import HeldCall
from rbee.api.wire import ChatImage, ChatMessage, Unsupported, refuse_unserved

NO_OPS = frozenset({"metadata", "service_tier"})
NOT_YET = {
    "thinking": "extended thinking is not served",
    "container": "containers are not served",
    "mcp_servers": "MCP servers are not served",
}

ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    503: "overloaded_error",
    504: "api_error",
}


class Block(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: str
    text: str | None = None


class Message(BaseModel):
    model_config = ConfigDict(extra="forbid")
    role: Literal["user", "assistant"]
    content: str | list[Block]


class MessagesRequest(BaseModel):
    model_config = ConfigDict(extra="allow")

    model: str
    max_tokens: Annotated[int, Field(ge=1)]
    messages: Annotated[list[Message], Field(min_length=1)]
    system: str | list[Block] | None = None
    stop_sequences: Annotated[list[Annotated[str, Field(max_length=256)]], Field(max_length=16)] = []
    temperature: Annotated[float, Field(ge=0, le=1)] = 1.0
    top_p: Annotated[float, Field(gt=0, le=1)] = 0.95
    top_k: Annotated[int, Field(ge=0)] = 40
    stream: bool = False
    tools: Annotated[list[dict[str, Any]], Field(max_length=128)] | None = None
    tool_choice: dict[str, Any] | None = None

    def refuse_unserved(self) -> None:
        refuse_unserved(self.model_extra or {}, NO_OPS, NOT_YET)

    def constraint(self) -> dict[str, Any] | None:
        """With tools (tool_choice not `none`): a tool_call constraint; `any` and a named `tool` require a call."""
        choice = self.tool_choice or {"type": "auto"}
        if not self.tools or choice.get("type") == "none":
            return None
        tools = []
        for index, tool in enumerate(self.tools):
            schema = tool.get("input_schema") if isinstance(tool, dict) else None
            if not isinstance(tool.get("name"), str) or not isinstance(schema, dict):
                raise Unsupported(f"tools.{index}", f"tools[{index}] needs a name and an input_schema object")
            tools.append(
                {"name": tool["name"], "description": str(tool.get("description") or ""), "parameters": schema}
            )
        kind = choice.get("type")
        if kind in ("auto", "any"):
            return {"kind": "tool_call", "tools": tools, "required": kind == "any"}
        chosen = [tool for tool in tools if kind == "tool" and tool["name"] == choice.get("name")]
        if not chosen:
            raise Unsupported("tool_choice", "tool_choice must be auto, any, none, or {type: tool, name} of a tool")
        return {"kind": "tool_call", "tools": chosen, "required": True}

    def chat(self, sees: bool = False) -> list[ChatMessage]:
        """The conversation as rbee's workers take it: the system prompt first; a tool_use block as the call
        rbee's workers write, a tool_result block as a `tool` message, image blocks as images among the text when
        the model sees (`sees`: it has a projector)."""
        converted, seen = [], 0
        if self.system:
            converted.append(ChatMessage(role="system", content=_text(self.system, "system")))
        for index, message in enumerate(self.messages):
            where = f"messages.{index}.content"
            if isinstance(message.content, list) and any(b.type == "tool_result" for b in message.content):
                converted.extend(_results(message.content, where))
                continue
            pictures = _images(message.content, where, sees, self.model)
            seen += len(pictures)
            images.within_limit(seen, "messages")
            blocks = message.content
            text = _text(
                [b for b in blocks if b.type != "image"] if pictures and isinstance(blocks, list) else blocks, where
            )
            converted.append(ChatMessage(role=message.role, content=text, images=tuple(pictures) or None))
        return converted

    def sampling(self) -> dict[str, Any]:
        return {
            "max_tokens": self.max_tokens,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "top_k": self.top_k,
            "stop": list(self.stop_sequences),
            "constraint": self.constraint(),
        }


class CountTokensRequest(MessagesRequest):
    """`POST /v1/messages/count_tokens`: a Messages request without max_tokens, counted, not answered."""

    max_tokens: Annotated[int, Field(ge=1)] = 1


def _images(content: str | list[Block], where: str, sees: bool, model: str) -> list[ChatImage]:
    """A message's image blocks (base64 sources), each where it stands among the text blocks."""
    if isinstance(content, str):
        return []
    found, before = [], 0
    for number, block in enumerate(content):
        if block.type == "text" and block.text is not None:
            before += len(block.text)
        if block.type != "image":
            continue
        param = f"{where}.{number}"
        if not sees:
            raise images.unseen(param, model)
        source = (block.model_extra or {}).get("source")
        if not isinstance(source, dict) or source.get("type") != "base64":
            raise Unsupported(param, f"{param} must have a base64 source; rbee fetches no URL for a client")
        found.append(images.from_base64(str(source.get("media_type")), str(source.get("data")), before, param))
    return found


def _text(content: str | list[Block], where: str) -> str:
    if isinstance(content, str):
        return content
    parts = []
    for number, block in enumerate(content):
        extra = block.model_extra or {}
        if block.type == "tool_use" and isinstance(extra.get("input"), dict):
            parts.append(json.dumps({"name": extra.get("name"), "arguments": extra["input"]}))
            continue
        if block.type != "text" or block.text is None:
            raise Unsupported(
                f"{where}.{number}",
                f"{where}.{number} is a block of type {block.type}; text, tool_use and tool_result blocks are served",
            )
        parts.append(block.text)
    return "".join(parts)


def _results(content: list[Block], where: str) -> list[ChatMessage]:
    """A user turn that returns tool results: each result a `tool` message, any text a user message after."""
    results, text = [], []
    for number, block in enumerate(content):
        if block.type == "tool_result":
            body = (block.model_extra or {}).get("content", "")
            if isinstance(body, list):
                body = _text([Block.model_validate(part) for part in body], f"{where}.{number}.content")
            results.append(ChatMessage(role="tool", content=str(body)))
        else:
            text.append(_text([block], where))
    return results + ([ChatMessage(role="user", content="".join(text))] if text else [])


def new_id() -> str:
    return f"msg_{uuid.uuid4().hex[:24]}"


def stop_reason(reason: str) -> str:
    return {"length": "max_tokens", "tool_calls": "tool_use"}.get(reason, "end_turn")


def tool_use(request_id: str, name: str, arguments: dict[str, Any]) -> dict[str, Any]:
    return {"type": "tool_use", "id": f"toolu_{request_id.removeprefix('msg_')}", "name": name, "input": arguments}


def message(
    request_id: str,
    model: str,
    text: str,
    reason: str,
    prompt_tokens: int,
    completion_tokens: int,
    call: tuple[str, dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """The whole answer; with `call` (a tool call it is), a tool_use block and stop_reason tool_use."""
    content = [tool_use(request_id, *call)] if call is not None else [{"type": "text", "text": text}]
    return {
        "id": request_id,
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": stop_reason("tool_calls" if call is not None else reason),
        "stop_sequence": None,
        "usage": {"input_tokens": prompt_tokens, "output_tokens": completion_tokens},
    }


def error(status: int, message_text: str) -> dict[str, Any]:
    return {"type": "error", "error": {"type": ERROR_TYPES.get(status, "api_error"), "message": message_text}}


def block_stop(index: int) -> bytes:
    return _event("content_block_stop", {"type": "content_block_stop", "index": index})


def _event(name: str, payload: dict[str, Any]) -> bytes:
    data = json.dumps(payload, ensure_ascii=False, separators=(",", ":"))
    return f"event: {name}\ndata: {data}\n\n".encode()


class StreamEncoder:
    """A worker's tokens as Anthropic's stream: message_start, one text content block with its deltas,
    message_delta (stop reason and output tokens), message_stop; an error is an `error` event."""

    def __init__(self, request_id: str, model: str) -> None:
        self.request_id, self.model = request_id, model

    def start(self) -> bytes:
        started = {
            "type": "message_start",
            "message": {
                "id": self.request_id,
                "type": "message",
                "role": "assistant",
                "model": self.model,
                "content": [],
                "stop_reason": None,
                "stop_sequence": None,
                "usage": {"input_tokens": 0, "output_tokens": 0},
            },
        }
        block = {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}
        return _event("message_start", started) + _event("content_block_start", block)

    def token(self, text: str, logprobs: Sequence[dict[str, Any]] | None = None) -> bytes:
        # never asked for: the API has no logprobs (refused by name)
        delta = {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": text}}
        return _event("content_block_delta", delta)

    def finish(self, reason: str, prompt_tokens: int, completion_tokens: int) -> bytes:
        return block_stop(0) + self.ending(reason, prompt_tokens, completion_tokens)

    def ending(self, reason: str, prompt_tokens: int, completion_tokens: int) -> bytes:
        """message_delta (the stop reason and token counts), then message_stop."""
        ended = {
            "type": "message_delta",
            "delta": {"stop_reason": stop_reason(reason), "stop_sequence": None},
            "usage": {"input_tokens": prompt_tokens, "output_tokens": completion_tokens},
        }
        return _event("message_delta", ended) + _event("message_stop", {"type": "message_stop"})

    def error(self, message_text: str, code: str) -> bytes:
        return _event("error", {"type": "error", "error": {"type": "api_error", "message": f"{message_text} ({code})"}})


class ToolUseStream(HeldCall):
    """Anthropic's stream of an answer that may be a tool call: the (empty) text block ends, a tool_use block
    follows with its input as one input_json_delta, and the message stops with stop_reason tool_use."""

    inner: StreamEncoder

    def call(self, name: str, arguments: dict[str, Any], prompt_tokens: int, completion_tokens: int) -> bytes:
        block = tool_use(self.inner.request_id, name, {})
        delta = {"type": "input_json_delta", "partial_json": json.dumps(arguments)}
        return (
            block_stop(0)
            + _event("content_block_start", {"type": "content_block_start", "index": 1, "content_block": block})
            + _event("content_block_delta", {"type": "content_block_delta", "index": 1, "delta": delta})
            + block_stop(1)
            + self.inner.ending("tool_calls", prompt_tokens, completion_tokens)
        )
