"""A client's stream: opened now when its model has a worker (a refusal is then the client's HTTP status), or
started at once with cold-start comments while the request waits for a worker to start (a refusal then ends the
stream with an error in the client's wire format)."""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from rbee.clients.worker import Streamed
from rbee.queen.auth import Key
from rbee.queen.dispatch import Deliver, Dispatcher, OnError, Opened
from rbee.queen.errors import ClientError
from rbee.queen.metrics import Exchange
from rbee.queen.scheduling import Ask


@dataclass(frozen=True, slots=True)
class Relay:
    """A stream for one client: `run` it once with where its chunks go, or `abandon` it unrun."""

    run: Callable[[Deliver], Awaitable[None]]
    abandon: Callable[[], None]


async def streamed(
    dispatch: Dispatcher, ask: Ask, key: Key | None, body: Streamed, exchange: Exchange, on_error: OnError
) -> Relay:
    """A streamed answer in whichever wire format `body` asks of its worker (OpenAI's, Anthropic's): opened now
    when a worker is there (a refusal is then the client's HTTP status), or at once with cold-start comments."""
    if not dispatch.admission.has_workers(ask.model):
        return Relay(
            lambda deliver: relay_after_opening(dispatch, ask, key, body, exchange, on_error, deliver), lambda: None
        )
    opened = await dispatch.open(ask, key, body, exchange)
    return Relay(
        lambda deliver: dispatch.relay(exchange, opened, deliver, on_error),
        lambda: dispatch.abandon(exchange, opened),
    )


async def relay_after_opening(
    dispatch: Dispatcher,
    ask: Ask,
    key: Key | None,
    body: Streamed,
    exchange: Exchange,
    on_error: OnError,
    deliver: Deliver,
) -> None:
    """A stream that starts at once: cold-start comments while the request waits for its worker, then the relay;
    a refusal becomes the stream's error."""
    try:
        async with contextlib.aclosing(dispatch.opening(ask, key, body, exchange)) as items:
            async for item in items:
                if isinstance(item, Opened):
                    await dispatch.relay(exchange, item, deliver, on_error)
                else:
                    await deliver(item)
    except ClientError as refusal:
        await deliver(on_error(str(refusal), refusal.code or "refused"))
