"""Anthropic's Messages API in rbee's terms (pure): a `POST /v1/messages` body to rbee's chat messages and
sampling options, rbee's answer to a Message, and a worker's tokens to Anthropic's stream events
(`message_start` ... `message_stop`), so that Claude Code and other Anthropic-speaking tools can use a local model.

Served: system (a string or text blocks), multi-turn user/assistant messages with text content or text blocks,
max_tokens, stop_sequences, temperature, top_p, top_k, stream; metadata is a documented no-op. Refused by name
(400): tools, tool_choice, thinking, and any content block but text (image, document, tool_use, tool_result).
"""

from __future__ import annotations

import json
import uuid
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from rbee.api.wire import ChatMessage, Unsupported, refuse_unserved

NO_OPS = frozenset({"metadata", "service_tier"})
NOT_YET = {
    "tools": "tool use is not served yet",
    "tool_choice": "tool use is not served yet",
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

    def refuse_unserved(self) -> None:
        refuse_unserved(self.model_extra or {}, NO_OPS, NOT_YET)

    def chat(self) -> list[ChatMessage]:
        """The conversation as rbee's workers take it: the system prompt first, text only."""
        converted = []
        if self.system:
            converted.append(ChatMessage(role="system", content=_text(self.system, "system")))
        for index, message in enumerate(self.messages):
            converted.append(
                ChatMessage(role=message.role, content=_text(message.content, f"messages.{index}.content"))
            )
        return converted

    def sampling(self) -> dict[str, Any]:
        return {
            "max_tokens": self.max_tokens,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "top_k": self.top_k,
            "stop": list(self.stop_sequences),
        }


def _text(content: str | list[Block], where: str) -> str:
    if isinstance(content, str):
        return content
    parts = []
    for number, block in enumerate(content):
        if block.type != "text" or block.text is None:
            raise Unsupported(
                f"{where}.{number}", f"{where}.{number} is a block of type {block.type}; only text blocks are served"
            )
        parts.append(block.text)
    return "".join(parts)


def new_id() -> str:
    return f"msg_{uuid.uuid4().hex[:24]}"


def stop_reason(reason: str) -> str:
    return "max_tokens" if reason == "length" else "end_turn"


def message(
    request_id: str, model: str, text: str, reason: str, prompt_tokens: int, completion_tokens: int
) -> dict[str, Any]:
    return {
        "id": request_id,
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [{"type": "text", "text": text}],
        "stop_reason": stop_reason(reason),
        "stop_sequence": None,
        "usage": {"input_tokens": prompt_tokens, "output_tokens": completion_tokens},
    }


def error(status: int, message_text: str) -> dict[str, Any]:
    return {"type": "error", "error": {"type": ERROR_TYPES.get(status, "api_error"), "message": message_text}}


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

    def token(self, text: str) -> bytes:
        delta = {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": text}}
        return _event("content_block_delta", delta)

    def finish(self, reason: str, prompt_tokens: int, completion_tokens: int) -> bytes:
        ended = {
            "type": "message_delta",
            "delta": {"stop_reason": stop_reason(reason), "stop_sequence": None},
            "usage": {"input_tokens": prompt_tokens, "output_tokens": completion_tokens},
        }
        return (
            _event("content_block_stop", {"type": "content_block_stop", "index": 0})
            + _event("message_delta", ended)
            + _event("message_stop", {"type": "message_stop"})
        )

    def error(self, message_text: str, code: str) -> bytes:
        return _event("error", {"type": "error", "error": {"type": "api_error", "message": f"{message_text} ({code})"}})
