"""Federation: a request for a model that providers serve too (other rbee queens, OpenAI-compatible endpoints)
may be forwarded to one of them instead of waiting for this fleet's own workers.

Per request, the candidates are ranked (ranking.py) and tried in that order. A provider is tried until its first
bytes: one that fails before them (refused, unreachable, silent) is recorded and the next candidate is tried,
within the retry budget; after them the answer is the client's, and a provider lost mid-answer ends it with an
error in the client's wire format, never a silent switch to another. Every forwarded request is metered
(metering.py).

The client's request is forwarded as it came (its own JSON, the model renamed to the provider's name for it), to
the same API path: no translation, so what the provider answers is what the client asked for.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from rbee.api import sse, wire
from rbee.clients.provider import ProviderCall, ProviderCallError
from rbee.queen import metrics, parts
from rbee.queen.asgi import SSE, Deliver, RelayResponse
from rbee.queen.auth import Key
from rbee.queen.errors import ClientError, sent_object
from rbee.queen.metrics import Exchange
from rbee.queen.providers import Provider
from rbee.queen.ranking import Shape, local_side, preferences, rank
from rbee.spec.providers import Federation, ProviderKind

OnError = Callable[[str, str], bytes]


PATHS = {
    Shape.CHAT: "/chat/completions",
    Shape.COMPLETIONS: "/completions",
    Shape.EMBEDDINGS: "/embeddings",
    Shape.MESSAGES: "/messages",
    Shape.RESPONSES: "/responses",
}


async def route(
    request: Request,
    queen: parts.Queen,
    key: Key | None,
    model: str,
    shape: Shape,
    stream: bool,
    on_error: OnError | None,
) -> Response | None:
    """The answer of a provider, or None when this fleet's own workers are to serve the request (the caller goes
    on as without providers). Cheap when no provider serves `model`: one lookup."""
    providers = queen.fleet.providers
    serving = providers.serving(model)
    if not serving:
        return None
    settings = providers.settings
    ranked, left_out = rank(model, shape, preferences(key, request.headers), local_side(queen, model), serving)
    body = sent_object(request)
    deadline = time.monotonic() + settings.retry_budget
    tried: list[str] = []
    for index, candidate in enumerate(ranked):
        provider = candidate.provider
        if provider is None:
            return None
        if provider.full:
            tried.append(f"{provider.name} has {provider.in_flight} requests in flight, its max_concurrent")
            continue
        left = deadline - time.monotonic()
        if left <= 0:
            tried.append(f"{provider.name} was not tried: the retry budget of {settings.retry_budget:g} s is spent")
            continue
        bound = left if index == len(ranked) - 1 else patience(provider, left)
        answer = await _try(queen, key, model, shape, body, stream, on_error, provider, bound, settings)
        if isinstance(answer, Response):
            return answer
        tried.append(answer)
    reasons = "; ".join([*tried, *left_out]) or "none is allowed for this request"
    raise ClientError(
        502 if tried else 503,
        f"no provider could serve {model}: {reasons}",
        "api_error" if tried else "service_unavailable",
        "no_provider",
    )


def patience(provider: Provider, left: float) -> float:
    """How long one provider may take to its first bytes when another candidate comes after it: twice its
    promised p95 time to first token (at least a second), or else half what is left of the retry budget, so that a
    provider that froze leaves time to try the next. The last candidate has all that is left."""
    sla = provider.spec.sla
    wanted = max(1.0, 2 * sla.ttft_p95) if sla is not None else left / 2
    return min(left, wanted)


async def _try(
    queen: parts.Queen,
    key: Key | None,
    model: str,
    shape: Shape,
    body: dict[str, Any],
    stream: bool,
    on_error: OnError | None,
    provider: Provider,
    seconds: float,
    settings: Federation,
) -> Response | str:
    """The provider's answer, or why it gave none before its first bytes (it is then recorded as failed)."""
    remote = provider.remote(model) or model
    sent = {**body, "model": remote}
    counted = shape in (Shape.CHAT, Shape.COMPLETIONS) and stream and provider.spec.kind is ProviderKind.OPENAI
    added_usage = counted and not (body.get("stream_options") or {}).get("include_usage")
    if added_usage:  # how else to know what it cost; the usage chunk is taken out again on the way
        sent["stream_options"] = {**(body.get("stream_options") or {}), "include_usage": True}
    call = queen.fleet.providers.client.call(provider.spec.endpoint, PATHS[shape], provider.key, sent, provider.trust)
    exchange = Exchange(f"fwd-{provider.name}-{time.monotonic_ns()}", model, key.name if key else None)
    exchange.hive, exchange.worker = f"provider/{provider.name}", remote
    provider.in_flight += 1
    try:
        async with asyncio.timeout(seconds):
            await call.open()
    except TimeoutError:
        call.close()
        return _failed(queen, provider, exchange, f"{provider.name} sent nothing within {seconds:.3g} s")
    except ProviderCallError as failure:
        if not failure.retriable:  # the request itself is wrong: the provider's word is the client's answer
            provider.in_flight -= 1
            exchange.failed(failure.status or 400, str(failure))
            metrics.record(queen.metrics, exchange)
            return Response(failure.body, failure.status or 400, media_type="application/json")
        return _failed(queen, provider, exchange, f"{provider.name}: {failure}", failure.code == "unauthorized")
    except BaseException:
        provider.in_flight -= 1
        call.close()
        raise
    exchange.first_byte = call.first_at
    provider.answered(model, (call.first_at or time.monotonic()) - exchange.started)
    meter = Metered(queen, provider, exchange, model, call)
    if not stream:
        try:
            async with asyncio.timeout(queen.fleet.time_limit(model)):
                whole = await call.read()
        except (ProviderCallError, TimeoutError) as failure:
            meter.finish(502, str(failure) or "the answer took longer than the model's request_timeout")
            raise ClientError(502, f"provider {provider.name}: {failure}", "api_error", "provider_lost") from None
        meter.finish(200, None, whole)
        return Response(whole, 200, {"x-rbee-provider": provider.name}, call.media_type or "application/json")

    async def relay(deliver: Deliver) -> None:
        passing = UsageFilter(deliver) if added_usage else None
        try:
            await call.pump(passing.deliver if passing is not None else deliver)
        except ProviderCallError as failure:
            message = f"provider {provider.name}: {failure}"
            provider.failed(message, settings.unhealthy_after)
            meter.finish(502, message)
            if on_error is not None:
                await deliver(on_error(message, "provider_lost"))
            return
        except BaseException:
            meter.finish(499, "the client went away")
            call.close()
            raise
        meter.finish(200, None, usage=passing.usage if passing is not None else None)

    def abandon() -> None:
        call.close()
        meter.finish(499, "the request was given up before its answer began")

    return RelayResponse(relay, abandon, call.media_type or SSE, x_rbee_provider=provider.name)


def _failed(queen: parts.Queen, provider: Provider, exchange: Exchange, why: str, at_once: bool = False) -> str:
    provider.in_flight -= 1
    provider.failed(why, queen.fleet.providers.settings.unhealthy_after, at_once)
    exchange.failed(502, why)
    metrics.record(queen.metrics, exchange)
    return why


class Metered:
    """A forwarded request's ending, recorded once: its slot at the provider freed, the exchange logged, and its
    usage metered from what the provider said it took."""

    def __init__(self, queen: parts.Queen, provider: Provider, exchange: Exchange, model: str, call: ProviderCall):
        self.queen, self.provider, self.exchange, self.model, self.call = queen, provider, exchange, model, call
        self.done = False

    def finish(
        self, status: int, error: str | None, whole: bytes | None = None, usage: tuple[int, int] | None = None
    ) -> None:
        if self.done:
            return
        self.done = True
        self.provider.in_flight -= 1
        if error is not None:
            self.exchange.failed(status, error)
        tokens = usage or tokens_in(whole if whole is not None else b"".join(self.call.tail))
        self.exchange.prompt_tokens, self.exchange.tokens = tokens
        settings = self.queen.fleet.providers.settings
        self.queen.meter.add(
            self.exchange.key,
            self.provider.name,
            self.model,
            tokens,
            self.provider.pricing(self.model),
            settings.margin,
            self.exchange.status,
        )
        metrics.record(self.queen.metrics, self.exchange)


def tokens_in(answer: bytes) -> tuple[int, int]:
    """The tokens in and out an answer says it took: an rbee queen's end comment, an OpenAI or Anthropic usage
    block (whole, or in the last events of a stream); (0, 0) when it says nothing."""
    end = wire.parse_end(answer)
    if end is not None:
        return int(end.get("prompt_tokens", 0)), int(end.get("completion_tokens", 0))
    candidates: list[Any] = []
    try:
        candidates.append(json.loads(answer))
    except ValueError:
        for event in sse.Parser().feed(answer[answer.find(b"data:") :] if b"data:" in answer else b""):
            if event.data and event.data.startswith("{"):
                try:
                    candidates.append(event.json())
                except ValueError:
                    continue
    for data in reversed(candidates):
        usage = _usage_block(data)
        if usage is not None:
            return usage
    return 0, 0


def _usage_block(data: Any) -> tuple[int, int] | None:
    """(in, out) of a `usage` block: OpenAI's (prompt/completion tokens), Anthropic's and the Responses API's
    (input/output tokens, the latter inside its `response`)."""
    if not isinstance(data, dict):
        return None
    usage = data.get("usage")
    if not isinstance(usage, dict) and isinstance(data.get("response"), dict):
        usage = data["response"].get("usage")
    if not isinstance(usage, dict):
        return None
    given = (
        usage.get("prompt_tokens", usage.get("input_tokens")),
        usage.get("completion_tokens", usage.get("output_tokens")),
    )
    try:
        return int(given[0] or 0), int(given[1] or 0)
    except (TypeError, ValueError):
        return None


class UsageFilter:
    """An OpenAI stream passed on event by event with the usage chunk (which this queen asked for, its client
    did not) taken out and kept: what the provider says the request took."""

    def __init__(self, deliver: Deliver) -> None:
        self.out = deliver
        self.parser = sse.Parser()
        self.usage: tuple[int, int] | None = None

    async def deliver(self, chunk: bytes) -> None:
        kept = []
        for event in self.parser.feed(chunk):
            if event.data.startswith("{") and '"usage"' in event.data:
                try:
                    data = event.json()
                except ValueError:
                    data = None
                if isinstance(data, dict) and not data.get("choices") and isinstance(data.get("usage"), dict):
                    self.usage = _usage_block(data)
                    continue
            kept.append(_encode(event))
        if kept:
            await self.out(b"".join(kept))


def _encode(event: sse.Event) -> bytes:
    """An event as it was sent (its comments, name and data lines)."""
    lines = [f": {comment}" for comment in event.comments]
    if event.name:
        lines.append(f"event: {event.name}")
    if event.data or event.name:
        lines.extend(f"data: {line}" for line in event.data.split("\n"))
    return ("\n".join(lines) + "\n\n").encode()
