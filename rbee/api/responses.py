"""OpenAI's Responses API in rbee's terms (pure), stateless: a `POST /v1/responses` body to rbee's chat and
sampling options, rbee's answer to a Response object, and a worker's tokens to the Responses stream events
(`response.created` ... `response.output_text.delta` ... `response.completed`).

Served: input as a string or a list of messages (string content or input_text/output_text parts; input_image
parts for a model that sees) and function_call / function_call_output items, instructions, max_output_tokens,
temperature, top_p, stream, text.format (json_object, json_schema), function tools with tool_choice (none, auto,
required, a function by name; an answer that is a call is a function_call output item); store, metadata, user,
service_tier, truncation and parallel_tool_calls are documented no-ops (nothing is ever stored). Refused by name
(400): previous_response_id (rbee keeps no responses), tools that are not functions, reasoning, include, and
any other input item or part.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Sequence
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from rbee.api import images
from rbee.api.calls import HeldCall, Tool
from rbee.api.wire import ChatImage, ChatMessage, Unsupported, refuse_unserved

NO_OPS = frozenset({"store", "metadata", "user", "service_tier", "parallel_tool_calls", "truncation"})
NOT_YET = {
    "previous_response_id": "rbee keeps no responses (it is stateless); send the whole conversation as input",
    "conversation": "rbee keeps no conversations; send the whole conversation as input",
    "reasoning": "reasoning settings are not served",
    "include": "include is not served",
    "prompt": "stored prompts are not served",
    "background": "background responses are not served",
}
TEXT_PARTS = ("input_text", "output_text", "text")


class Part(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: str
    text: str | None = None


class Item(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: str = "message"
    role: Literal["user", "assistant", "system", "developer"] | None = None
    content: str | list[Part] | None = None


class ResponsesRequest(BaseModel):
    model_config = ConfigDict(extra="allow")

    model: str
    input: str | Annotated[list[Item], Field(min_length=1)]
    instructions: str | None = None
    max_output_tokens: Annotated[int, Field(ge=1)] = 256
    temperature: Annotated[float, Field(ge=0, le=2)] = 0.7
    top_p: Annotated[float, Field(gt=0, le=1)] = 0.95
    stream: bool = False
    text: dict[str, Any] | None = None
    tools: Annotated[list[Any], Field(max_length=128)] | None = None
    tool_choice: str | dict[str, Any] | None = None

    def refuse_unserved(self) -> None:
        refuse_unserved(self.model_extra or {}, NO_OPS, NOT_YET, {"include": (None, [])})
        self.constraint()

    def constraint(self) -> dict[str, Any] | None:
        """`text.format` as rbee's constraint: text (none), json_object, or json_schema (its schema beside its
        name, as the Responses API puts it); or, with function tools (tool_choice not `none`), a tool call."""
        called = self._tool_call()
        if called is not None:
            if (self.text or {}).get("format", {"type": "text"}).get("type", "text") != "text":
                raise Unsupported("text.format", "text.format and tools cannot be combined; send one of them")
            return called
        shape = (self.text or {}).get("format") or {"type": "text"}
        kind = shape.get("type")
        if kind == "text":
            return None
        if kind == "json_object":
            return {"kind": "json"}
        if kind == "json_schema" and isinstance(shape.get("schema"), dict):
            return {"kind": "json_schema", "json_schema": shape["schema"]}
        raise Unsupported(
            "text.format", f"text.format {kind!r} needs to be text, json_object or json_schema with a schema"
        )

    def _tool_call(self) -> dict[str, Any] | None:
        if not self.tools or self.tool_choice == "none":
            return None
        tools = []
        for index, tool in enumerate(self.tools):
            if not isinstance(tool, dict) or tool.get("type") != "function" or not isinstance(tool.get("name"), str):
                kind = tool.get("type") if isinstance(tool, dict) else tool
                raise Unsupported(f"tools.{index}", f"tools[{index}] is a {kind} tool; only function tools are served")
            parameters = tool.get("parameters") or {"type": "object"}
            tools.append(
                {"name": tool["name"], "description": str(tool.get("description") or ""), "parameters": parameters}
            )
        choice = self.tool_choice or "auto"
        if choice in ("auto", "required"):
            return {"kind": "tool_call", "tools": tools, "required": choice == "required"}
        named = choice.get("name") if isinstance(choice, dict) and choice.get("type") == "function" else None
        chosen = [tool for tool in tools if tool["name"] == named]
        if not chosen:
            raise Unsupported(
                "tool_choice",
                f"tool_choice must be none, auto, required or {{type: function, name}} of a tool, not {choice!r}",
            )
        return {"kind": "tool_call", "tools": chosen, "required": True}

    def chat(self, sees: bool = False) -> list[ChatMessage]:
        """The input as rbee's chat: instructions first, then the messages; `input_image` parts (a base64 data:
        URL in `image_url`) as images among the text when the model sees (`sees`: it has a projector)."""
        converted, seen = [], 0
        if self.instructions:
            converted.append(ChatMessage(role="system", content=self.instructions))
        if isinstance(self.input, str):
            return [*converted, ChatMessage(role="user", content=self.input)]
        for index, item in enumerate(self.input):
            if item.type in ("function_call", "function_call_output"):
                converted.append(_call_message(item, index))
                continue
            if item.type != "message" or item.role is None:
                raise Unsupported(
                    f"input.{index}", f"input[{index}] is a {item.type} item; messages and function calls are served"
                )
            where = f"input.{index}.content"
            content = item.content if isinstance(item.content, list) else None
            pictures = [_image(part, number, where, sees, self.model, content) for number, part in _images(content)]
            seen += len(pictures)
            images.within_limit(seen, "input")
            text = _text(
                [p for p in content if p.type != "input_image"] if content and pictures else item.content, where
            )
            converted.append(ChatMessage(role=item.role, content=text, images=tuple(pictures) or None))
        return converted

    def sampling(self) -> dict[str, Any]:
        return {
            "max_tokens": self.max_output_tokens,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "constraint": self.constraint(),
        }


def _call_message(item: Item, index: int) -> ChatMessage:
    """A function call the model made earlier (written as rbee's workers write a call), or its output (a `tool`
    message)."""
    extra = item.model_extra or {}
    if item.type == "function_call_output":
        return ChatMessage(role="tool", content=str(extra.get("output", "")))
    try:
        arguments = json.loads(str(extra.get("arguments") or "{}"))
    except ValueError:
        raise Unsupported(f"input.{index}.arguments", f"input[{index}].arguments must be a JSON string") from None
    return ChatMessage(role="assistant", content=json.dumps({"name": extra.get("name"), "arguments": arguments}))


def _call_item(request_id: str, name: str, arguments: dict[str, Any], done: bool = True) -> dict[str, Any]:
    code = request_id.removeprefix("resp_")
    return {
        "type": "function_call",
        "id": f"fc_{code}",
        "call_id": f"call_{code}",
        "name": name,
        "arguments": json.dumps(arguments) if done else "",
        "status": "completed" if done else "in_progress",
    }


def _images(content: list[Part] | None) -> list[tuple[int, Part]]:
    return [(number, part) for number, part in enumerate(content or ()) if part.type == "input_image"]


def _image(part: Part, number: int, where: str, sees: bool, model: str, content: list[Part] | None) -> ChatImage:
    param = f"{where}.{number}"
    if not sees:
        raise images.unseen(param, model)
    before = sum(len(p.text or "") for p in (content or [])[:number] if p.type in TEXT_PARTS)
    url = (part.model_extra or {}).get("image_url")
    if not isinstance(url, str):
        raise Unsupported(param, f"{param} needs image_url, a base64 data: URL (file_id is not served)")
    return images.from_url(url, before, param)


def _text(content: str | list[Part] | None, where: str) -> str:
    if content is None or isinstance(content, str):
        return content or ""
    parts = []
    for number, part in enumerate(content):
        if part.type not in TEXT_PARTS or part.text is None:
            raise Unsupported(
                f"{where}.{number}", f"{where}.{number} is a part of type {part.type}; only text is served"
            )
        parts.append(part.text)
    return "".join(parts)


def new_id() -> str:
    return f"resp_{uuid.uuid4().hex[:24]}"


def _message_item(request_id: str, text: str, status: str) -> dict[str, Any]:
    part = {"type": "output_text", "text": text, "annotations": []}
    return {
        "type": "message",
        "id": f"msg_{request_id.removeprefix('resp_')}",
        "status": status,
        "role": "assistant",
        "content": [part] if status == "completed" or text else [],
    }


def response(
    request_id: str,
    model: str,
    text: str,
    reason: str | None,
    prompt_tokens: int = 0,
    completion_tokens: int = 0,
    created_at: int | None = None,
    call: tuple[str, dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """The Response object; `reason` None while it is in progress; `call`: the answer is a function call."""
    status = "in_progress" if reason is None else ("incomplete" if reason == "length" and not call else "completed")
    output = [] if reason is None else [_message_item(request_id, text, "completed")]
    if call is not None:
        output = [_call_item(request_id, *call)]
    return {
        "id": request_id,
        "object": "response",
        "created_at": created_at or int(time.time()),
        "status": status,
        "model": model,
        "output": output,
        "parallel_tool_calls": False,
        "tool_choice": "none",
        "tools": [],
        "error": None,
        "incomplete_details": {"reason": "max_output_tokens"} if reason == "length" else None,
        "usage": None
        if reason is None
        else {
            "input_tokens": prompt_tokens,
            "output_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens_details": {"reasoning_tokens": 0},
        },
    }


class StreamEncoder:
    """A worker's tokens as the Responses stream: one message item with one output_text part."""

    def __init__(self, request_id: str, model: str) -> None:
        self.request_id, self.model = request_id, model
        self.created_at = int(time.time())
        self.item_id = f"msg_{request_id.removeprefix('resp_')}"
        self.sequence = 0
        self.text: list[str] = []
        self.opened = False
        """Whether the message item has been announced: with tools, only once the answer shows it is text."""
        self.lazy = False

    def _event(self, kind: str, **fields: Any) -> bytes:
        payload = {"type": kind, "sequence_number": self.sequence, **fields}
        self.sequence += 1
        data = json.dumps(payload, ensure_ascii=False, separators=(",", ":"))
        return f"event: {kind}\ndata: {data}\n\n".encode()

    def start(self) -> bytes:
        begun = response(self.request_id, self.model, "", None, created_at=self.created_at)
        created = self._event("response.created", response=begun) + self._event("response.in_progress", response=begun)
        return created + (self._open() if not self.lazy else b"")

    def _open(self) -> bytes:
        """The message item and its text part, announced."""
        if self.opened:
            return b""
        self.opened = True
        where = {"item_id": self.item_id, "output_index": 0, "content_index": 0}
        item = _message_item(self.request_id, "", "in_progress")
        part = {"type": "output_text", "text": "", "annotations": []}
        return self._event("response.output_item.added", output_index=0, item=item) + self._event(
            "response.content_part.added", **where, part=part
        )

    def token(self, text: str, logprobs: Sequence[dict[str, Any]] | None = None) -> bytes:
        # never asked for: the API has no logprobs (refused by name)
        self.text.append(text)
        where = {"item_id": self.item_id, "output_index": 0, "content_index": 0}
        return self._open() + self._event("response.output_text.delta", **where, delta=text, logprobs=[])

    def called(self, name: str, arguments: dict[str, Any], prompt_tokens: int, completion_tokens: int) -> bytes:
        """The answer is a function call: its item, its arguments as one delta, and the completed response."""
        item = _call_item(self.request_id, name, arguments)
        where = {"item_id": item["id"], "output_index": 0}
        done = response(
            self.request_id,
            self.model,
            "",
            "tool_calls",
            prompt_tokens,
            completion_tokens,
            self.created_at,
            (name, arguments),
        )
        return (
            self._event("response.output_item.added", output_index=0, item=_call_item(self.request_id, name, {}, False))
            + self._event("response.function_call_arguments.delta", **where, delta=item["arguments"])
            + self._event("response.function_call_arguments.done", **where, arguments=item["arguments"])
            + self._event("response.output_item.done", output_index=0, item=item)
            + self._event("response.completed", response=done)
        )

    def finish(self, reason: str, prompt_tokens: int, completion_tokens: int) -> bytes:
        text = "".join(self.text)
        where = {"item_id": self.item_id, "output_index": 0, "content_index": 0}
        done = response(self.request_id, self.model, text, reason, prompt_tokens, completion_tokens, self.created_at)
        final = "response.incomplete" if reason == "length" else "response.completed"
        return (
            self._open()
            + self._event("response.output_text.done", **where, text=text, logprobs=[])
            + self._event(
                "response.content_part.done", **where, part={"type": "output_text", "text": text, "annotations": []}
            )
            + self._event("response.output_item.done", output_index=0, item=done["output"][0])
            + self._event(final, response=done)
        )

    def error(self, message: str, code: str) -> bytes:
        return self._event("error", message=message, code=code, param=None)


class ToolCallStream(HeldCall):
    """The Responses stream of an answer that may be a function call: text streams as a message item once it
    cannot be a call; a call goes out as a function_call item with its arguments."""

    inner: StreamEncoder

    def __init__(self, inner: StreamEncoder, tools: Sequence[Tool]) -> None:
        super().__init__(inner, tools)
        inner.lazy = True

    def call(self, name: str, arguments: dict[str, Any], prompt_tokens: int, completion_tokens: int) -> bytes:
        return self.inner.called(name, arguments, prompt_tokens, completion_tokens)
