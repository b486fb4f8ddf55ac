"""OpenAI's Responses API in rbee's terms (pure), stateless: a `POST /v1/responses` body to rbee's chat and
sampling options, rbee's answer to a Response object, and a worker's tokens to the Responses stream events
(`response.created` ... `response.output_text.delta` ... `response.completed`).

Served: input as a string or a list of messages (string content or input_text/output_text parts),
instructions, max_output_tokens, temperature, top_p, stream, text.format (json_object, json_schema); store,
metadata, user, service_tier and parallel_tool_calls are documented no-ops (nothing is ever stored). Refused by
name (400): previous_response_id (rbee keeps no responses), tools, tool_choice, reasoning, include, and any
input item or part that is not text.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Sequence
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from rbee.api import images
from rbee.api.wire import ChatImage, ChatMessage, Unsupported, refuse_unserved

NO_OPS = frozenset({"store", "metadata", "user", "service_tier", "parallel_tool_calls", "truncation"})
NOT_YET = {
    "previous_response_id": "rbee keeps no responses (it is stateless); send the whole conversation as input",
    "conversation": "rbee keeps no conversations; send the whole conversation as input",
    "tools": "tool calls are not served yet",
    "tool_choice": "tool calls are not served yet",
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

    def refuse_unserved(self) -> None:
        refuse_unserved(self.model_extra or {}, NO_OPS, NOT_YET, {"tools": (None, []), "include": (None, [])})
        self.constraint()

    def constraint(self) -> dict[str, Any] | None:
        """`text.format` as rbee's constraint: text (none), json_object, or json_schema (its schema beside its
        name, as the Responses API puts it)."""
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

    def chat(self, sees: bool = False) -> list[ChatMessage]:
        """The input as rbee's chat: instructions first, then the messages; `input_image` parts (a base64 data:
        URL in `image_url`) as images among the text when the model sees (`sees`: it has a projector)."""
        converted, seen = [], 0
        if self.instructions:
            converted.append(ChatMessage(role="system", content=self.instructions))
        if isinstance(self.input, str):
            return [*converted, ChatMessage(role="user", content=self.input)]
        for index, item in enumerate(self.input):
            if item.type != "message" or item.role is None:
                raise Unsupported(f"input.{index}", f"input[{index}] is a {item.type} item; only messages are served")
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


def _images(content: list[Part] | None) -> list[tuple[int, Part]]:
    return [(number, part) for number, part in enumerate(content or ()) if part.type == "input_image"]


def _image(part: Part, number: int, where: str, sees: bool, model: str, content: list[Part] | None) -> ChatImage:
    param = f"{where}.{number}"
    if not sees:
        raise Unsupported(
            param,
            f"{param} is an image and the model {model} sees no images; give the model an mmproj (a multimodal "
            "projector) in hive.yaml, or send text only",
        )
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
) -> dict[str, Any]:
    """The Response object; `reason` None while it is in progress."""
    status = "in_progress" if reason is None else ("incomplete" if reason == "length" else "completed")
    output = [] if reason is None else [_message_item(request_id, text, "completed")]
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

    def _event(self, kind: str, **fields: Any) -> bytes:
        payload = {"type": kind, "sequence_number": self.sequence, **fields}
        self.sequence += 1
        data = json.dumps(payload, ensure_ascii=False, separators=(",", ":"))
        return f"event: {kind}\ndata: {data}\n\n".encode()

    def start(self) -> bytes:
        begun = response(self.request_id, self.model, "", None, created_at=self.created_at)
        where = {"item_id": self.item_id, "output_index": 0, "content_index": 0}
        return (
            self._event("response.created", response=begun)
            + self._event("response.in_progress", response=begun)
            + self._event(
                "response.output_item.added", output_index=0, item=_message_item(self.request_id, "", "in_progress")
            )
            + self._event(
                "response.content_part.added", **where, part={"type": "output_text", "text": "", "annotations": []}
            )
        )

    def token(self, text: str, logprobs: Sequence[dict[str, Any]] | None = None) -> bytes:
        # never asked for: the API has no logprobs (refused by name)
        self.text.append(text)
        where = {"item_id": self.item_id, "output_index": 0, "content_index": 0}
        return self._event("response.output_text.delta", **where, delta=text, logprobs=[])

    def finish(self, reason: str, prompt_tokens: int, completion_tokens: int) -> bytes:
        text = "".join(self.text)
        where = {"item_id": self.item_id, "output_index": 0, "content_index": 0}
        done = response(self.request_id, self.model, text, reason, prompt_tokens, completion_tokens, self.created_at)
        final = "response.incomplete" if reason == "length" else "response.completed"
        return (
            self._event("response.output_text.done", **where, text=text, logprobs=[])
            + self._event(
                "response.content_part.done", **where, part={"type": "output_text", "text": text, "annotations": []}
            )
            + self._event("response.output_item.done", output_index=0, item=done["output"][0])
            + self._event(final, response=done)
        )

    def error(self, message: str, code: str) -> bytes:
        return self._event("error", message=message, code=code, param=None)
