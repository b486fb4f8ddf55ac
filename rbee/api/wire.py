"""Request bodies and stream events that cross process boundaries: queen -> worker, hive <-> worker.

Text generation streams Server-Sent Events:
    data: {"token": "...", "index": i}
    ...
    data: {"done": true, "total_tokens": n, "prompt_tokens": p, "finish_reason": "stop" | "length" | "cancelled"}
and an error at any point is `event: error` with `data: {"error": "...", "code": "..."}`, never a silent close.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Mapping, Sequence
from enum import StrEnum
from typing import Annotated, Any, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field, model_validator

from rbee.api.calls import Constraint


class ChatImage(BaseModel):
    """An image in a chat message: its bytes (base64) and where in the message's text it stands."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    data: Annotated[str, Field(min_length=1)]
    at: Annotated[int, Field(ge=0)]
    """How many characters of the message's content come before it."""


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)

    role: Literal["system", "user", "assistant", "tool", "developer"]
    content: str | None = ""
    images: tuple[ChatImage, ...] | None = None
    """Images among the text (OpenAI's image_url parts, Anthropic's image blocks): a model with a projector sees
    them, any other refuses them in the queen."""


class Unsupported(ValueError):
    """A field of a client's request that rbee does not serve; `param` names it (the 400 says so)."""

    def __init__(self, param: str, message: str) -> None:
        super().__init__(message)
        self.param = param


def refuse_unserved(
    given: Mapping[str, Any],
    no_ops: Collection[str],
    not_yet: Mapping[str, str],
    neutral: Mapping[str, tuple[Any, ...]] | None = None,
) -> None:
    """Raise Unsupported for the first field of `given` (a request's fields beyond those it serves) that is not
    a documented no-op: one rbee does not serve yet (`not_yet` says why) unless it carries its `neutral` value,
    or one it does not know at all. Nothing a client sends is ignored silently."""
    for name, value in given.items():
        if name in no_ops or (name in not_yet and neutral is not None and value in neutral.get(name, (None,))):
            continue
        reason = not_yet.get(name, "rbee does not know this field")
        raise Unsupported(name, f"{name}: {reason}; remove it from the request")


class Encoder(Protocol):
    """A stream's bytes in a client's wire format."""

    def start(self) -> bytes: ...

    def token(self, text: str, logprobs: Sequence[dict[str, Any]] | None = None) -> bytes:
        """`logprobs`: the tokens this text came from, each `{token, logprob, bytes, top_logprobs}`."""
        ...

    def finish(self, reason: str, prompt_tokens: int, completion_tokens: int) -> bytes: ...

    def error(self, message: str, code: str) -> bytes: ...


class SamplingOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    max_tokens: Annotated[int, Field(ge=1, le=131072)] = 256
    temperature: Annotated[float, Field(ge=0, le=5)] = 0.7
    top_p: Annotated[float, Field(gt=0, le=1)] = 0.95
    top_k: Annotated[int, Field(ge=0)] = 40
    repeat_penalty: Annotated[float, Field(gt=0, le=10)] = 1.1
    stop: Annotated[tuple[Annotated[str, Field(min_length=1, max_length=256)], ...], Field(max_length=16)] = ()
    seed: int | None = None
    constraint: Constraint | None = None
    presence_penalty: Annotated[float, Field(ge=-2, le=2)] = 0.0
    """Subtracted from the logit of every token the answer already holds (OpenAI's presence_penalty)."""
    frequency_penalty: Annotated[float, Field(ge=-2, le=2)] = 0.0
    """Subtracted once per time a token already occurs in the answer (OpenAI's frequency_penalty)."""
    logit_bias: Annotated[
        tuple[tuple[Annotated[int, Field(ge=0)], Annotated[float, Field(ge=-100, le=100)]], ...],
        Field(max_length=300),
    ] = ()
    """(token id, bias) pairs added to those tokens' logits at every step; -100 bans a token."""
    logprobs: Annotated[int, Field(ge=0, le=20)] | None = None
    """Report each answer token's log probability and this many most likely alternatives; None: do not."""

    def extras(self) -> tuple[str, ...]:
        """The sampling fields set away from their neutral values, which not every engine serves."""
        given = {
            "presence_penalty": self.presence_penalty != 0,
            "frequency_penalty": self.frequency_penalty != 0,
            "logit_bias": bool(self.logit_bias),
            "logprobs": self.logprobs is not None,
        }
        return tuple(name for name, on in given.items() if on)


class StreamFormat(StrEnum):
    RBEE = "rbee"
    OPENAI_CHAT = "openai-chat"
    OPENAI_COMPLETION = "openai-completion"
    ANTHROPIC = "anthropic"
    OPENAI_RESPONSES = "openai-responses"


class ExecuteRequest(SamplingOptions):
    """The body of a worker's `POST /v1/execute`: either a raw prompt or chat messages.

    `format` picks the wire format of the stream: rbee's events, or OpenAI's chunks written by the worker itself
    (with `openai_model` and `include_usage`) so the queen relays the bytes unchanged. Every format ends with an
    SSE comment `: rbee-end {...}` (ignored by SSE clients) carrying the token counts and how it ended.
    """

    request_id: Annotated[str, Field(min_length=1, max_length=128)] = "anonymous"
    prompt: str | None = None
    messages: tuple[ChatMessage, ...] | None = None
    format: StreamFormat = StreamFormat.RBEE
    openai_model: str | None = None
    include_usage: bool = False
    time_limit: Annotated[float, Field(gt=0, le=86400)] | None = None
    """Seconds the worker may spend on this request (the model's request_timeout); past it the answer ends
    with an error, not a finish reason, and the worker is free again."""

    @model_validator(mode="after")
    def _one_input(self) -> ExecuteRequest:
        if (self.prompt is None) == (self.messages is None):
            raise ValueError("give exactly one of 'prompt' or 'messages'")
        if self.messages is not None and not self.messages:
            raise ValueError("'messages' must not be empty")
        return self


class EmbedRequest(BaseModel):
    """The body of an embedding worker's `POST /v1/execute`; it answers `{"embeddings", "prompt_tokens"}`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    request_id: Annotated[str, Field(min_length=1, max_length=128)] = "anonymous"
    input: Annotated[tuple[str, ...], Field(min_length=1, max_length=2048)]
    encoding: Literal["float", "base64"] = "float"
    """`base64`: each vector as little-endian float32 bytes in base64 (what the queen asks for: a tenth of the
    cost of JSON floats, and what the openai client requests by default)."""


class RerankRequest(BaseModel):
    """The body of a reranking worker's `POST /v1/execute`; it answers `{"scores", "prompt_tokens"}`, a score per
    document in their order."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    request_id: Annotated[str, Field(min_length=1, max_length=128)] = "anonymous"
    query: Annotated[str, Field(min_length=1)]
    documents: Annotated[tuple[str, ...], Field(min_length=1, max_length=1000)]


class FinishReason(StrEnum):
    STOP = "stop"
    LENGTH = "length"
    CANCELLED = "cancelled"


class ReadyReport(BaseModel):
    """A worker tells its hive it has loaded its model: `POST /v1/workers/{id}/ready`."""

    model_config = ConfigDict(frozen=True)

    port: int
    backend: str
    device: str
    load_seconds: float = 0.0
    slots: int = Field(default=1, ge=1, le=1024)
    """Requests it serves at once."""


def sse(data: dict[str, Any], event: str | None = None) -> bytes:
    head = f"event: {event}\n" if event else ""
    return f"{head}data: {json.dumps(data, ensure_ascii=False, separators=(',', ':'))}\n\n".encode()


def token_event(token: str, index: int) -> bytes:
    return sse({"token": token, "index": index})


def done_event(total_tokens: int, prompt_tokens: int, finish_reason: FinishReason) -> bytes:
    return sse(
        {"done": True, "total_tokens": total_tokens, "prompt_tokens": prompt_tokens, "finish_reason": finish_reason}
    )


def error_event(message: str, code: str = "worker_error") -> bytes:
    return sse({"error": message, "code": code}, event="error")


class EventEncoder:
    """rbee's stream, one token at a time (the counterpart of openai.StreamEncoder)."""

    def __init__(self) -> None:
        self.index = 0

    def start(self) -> bytes:
        return b""

    def token(self, text: str, logprobs: Sequence[dict[str, Any]] | None = None) -> bytes:
        self.index += 1
        if logprobs is not None:
            return sse({"token": text, "index": self.index - 1, "logprobs": list(logprobs)})
        return token_event(text, self.index - 1)

    def finish(self, reason: str, prompt_tokens: int, completion_tokens: int) -> bytes:
        return done_event(completion_tokens, prompt_tokens, FinishReason(reason))

    def error(self, message: str, code: str) -> bytes:
        return error_event(message, code)


END_MARK = b": rbee-end "


def route_comment(hive: str, worker: str) -> bytes:
    """`: rbee-route {...}`: which hive and worker a task's tokens come from (the task stream says it before the
    first token, and again should a retry move it to another worker before any token)."""
    return b": rbee-route " + json.dumps({"hive": hive, "worker": worker}, separators=(",", ":")).encode() + b"\n\n"


def end_comment(
    prompt_tokens: int, completion_tokens: int, finish_reason: str, error: str | None = None, cached_tokens: int = 0
) -> bytes:
    """`cached_tokens`: of the prompt's tokens, those the engine found in its cache and did not evaluate again."""
    body: dict[str, Any] = {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "finish_reason": finish_reason,
    }
    if cached_tokens:
        body["cached_tokens"] = cached_tokens
    if error is not None:
        body["error"] = error
    return END_MARK + json.dumps(body, separators=(",", ":")).encode() + b"\n\n"


def parse_end(buffer: bytes, stream_start: bool = False) -> dict[str, Any] | None:
    """The `: rbee-end` comment's body, if `buffer` (the end of a stream) holds it: matched only at the start of
    a line, so generated text that contains the words is never taken for it, and read defensively (None when it
    does not parse). `stream_start`: `buffer` begins where the stream began (a line start)."""
    at = buffer.rfind(b"\n" + END_MARK)
    if at != -1:
        at += 1
    elif stream_start and buffer.startswith(END_MARK):
        at = 0
    else:
        return None
    line_end = buffer.find(b"\n", at)
    try:
        data = json.loads(buffer[at + len(END_MARK) : line_end if line_end != -1 else None])
    except ValueError:
        return None
    if not isinstance(data, dict) or not isinstance(data.get("completion_tokens", 0), int):
        return None
    return data


def bearer(token: str | None) -> dict[str, str]:
    """The Authorization header that carries a credential, or none."""
    return {"Authorization": f"Bearer {token}"} if token else {}


def error_body(message: str, code: str) -> dict[str, Any]:
    """A JSON error for hive and worker endpoints: one sentence and a machine-readable code."""
    return {"error": {"message": message, "code": code}}


class ModelRequest(BaseModel):
    """The body of a hive's `POST /v1/models`: put this model in the catalog."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: Annotated[str, Field(pattern=r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")]
    source: str
    format: str = "auto"
    sha256: str | None = None
    kind: str = "text"
    code_files: Literal["skip", "fetch"] = "skip"
    pinned: bool = False
    """The operator asked for it by hand: the entry is kept while hive.yaml names the model (CatalogEntry)."""
    mmproj: str | None = None
    """A gguf model's multimodal projector, fetched beside it (one .gguf file, any source scheme)."""

    def same_fetch(self, other: ModelRequest) -> bool:
        """Whether `other` asks for the same bytes (a pin alone does not make another fetch)."""
        return self.model_copy(update={"pinned": other.pinned}) == other


class DownloadProgress(BaseModel):
    """A hive's model download, as far as it got (`POST /v1/models` streams these)."""

    model_config = ConfigDict(frozen=True)

    stage: Literal["download"] = "download"
    bytes: int
    total: int = 0
    """0 while the size is not known."""
    file: str | None = None


class StageProgress(BaseModel):
    """A step of provisioning a model other than the download itself."""

    model_config = ConfigDict(frozen=True)

    stage: Literal["resolve", "verify"]
    detail: str | None = None
    file: str | None = None

    def describe(self) -> str:
        return f"{self.stage}: {self.detail or self.file or ''}".rstrip(": ")


ProvisionProgress = Annotated[DownloadProgress | StageProgress, Field(discriminator="stage")]


class WorkersRequest(BaseModel):
    """The body of a hive's `POST /v1/workers`: start this many replicas of a catalog model, or fewer: never more
    than bring the group to `at_most` workers loading or serving. The queen's reconcile pass and its cold start
    both grow a group from observations that may be a second old; the hive, which knows, takes the difference."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: str
    backend: str = "auto"
    device: str = "auto"
    replicas: Annotated[int, Field(ge=1, le=1024)] = 1
    at_most: Annotated[int, Field(ge=0, le=1024)] | None = None
    slots: Annotated[int, Field(ge=1, le=256)] | None = None
    context: Annotated[int, Field(ge=256, le=1048576)] | None = None
    threads: Annotated[int, Field(ge=1, le=256)] | None = None
    load_timeout: Annotated[float, Field(gt=0, le=86400)] | None = None
    """Seconds the workers may take to load before they count as failed (None: the hive's default)."""


class HeartbeatSubscription(BaseModel):
    """The queen asks a hive to send it heartbeats: where, and how often."""

    model_config = ConfigDict(extra="forbid")

    url: str = Field(pattern=r"^https?://")
    interval: float = Field(gt=0, le=3600)
