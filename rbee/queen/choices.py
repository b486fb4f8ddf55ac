"""Several answers to one request (OpenAI's `n`): each choice is a generation of its own, admitted, routed and
held like any request, so the slots it takes are counted and the per-key limits see it; the prefix policy puts
them on one worker, where a batching engine answers them together. A seeded request gives choice i the seed
plus i, so the choices differ and repeat.

Whole answers are gathered; streams are read as rbee events and written as OpenAI chunks, each with its
choice's index, the usage chunk and [DONE] once at the end. Any choice failing fails the request: the others
are cancelled (their workers stop within a token) and the stream ends with an error frame.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, Sequence
from typing import Any

from starlette.requests import Request

from rbee.api import openai_stream, sse, wire
from rbee.queen import parts
from rbee.queen.asgi import Deliver, Produce, RelayResponse
from rbee.queen.auth import Key
from rbee.queen.dispatch import Answer
from rbee.queen.generation import generate

MAX_CHOICES = 8
END_MARK = wire.END_MARK.decode()[2:].strip()


def each(fields: dict[str, Any], count: int) -> list[dict[str, Any]]:
    """The worker request of each choice: its own request id, and the seed plus its index when seeded."""
    seed = fields.get("seed")
    return [
        {**fields, "request_id": f"{fields['request_id']}{index}", "seed": None if seed is None else seed + index}
        for index in range(count)
    ]


async def whole(
    request: Request, queen: parts.Queen, key: Key | None, model: str, fields: dict[str, Any], count: int
) -> list[Answer]:
    """Every choice's whole answer, in order; the first failure cancels the rest and is the request's."""
    tasks = [asyncio.ensure_future(generate(request, queen, key, model, one, None)) for one in each(fields, count)]
    try:
        answers = await asyncio.gather(*tasks)
    except BaseException:  # the client's error is the first failure's, as it would be with one choice
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise
    return [answer for answer in answers if isinstance(answer, Answer)]


async def streamed(
    request: Request,
    queen: parts.Queen,
    key: Key | None,
    model: str,
    fields: dict[str, Any],
    encoders: Sequence[openai_stream.StreamEncoder],
) -> RelayResponse:
    """The choices' streams as one OpenAI stream. Each is opened now (a refusal is the client's HTTP status,
    and closes those already open)."""
    rbee_fields = {**fields, "format": wire.StreamFormat.RBEE}
    opened: list[RelayResponse] = []
    try:
        for one in each(rbee_fields, len(encoders)):
            relay = await generate(request, queen, key, model, one, wire.error_event)
            assert isinstance(relay, RelayResponse)
            opened.append(relay)
    except BaseException:
        for relay in opened:
            relay.abandon()
        raise

    async def produce(deliver: Deliver) -> None:
        async with contextlib.aclosing(_merged([relay.produce for relay in opened], encoders)) as chunks:
            async for chunk in chunks:
                await deliver(chunk)

    return RelayResponse(produce)


async def _merged(
    streams: Sequence[Produce], encoders: Sequence[openai_stream.StreamEncoder]
) -> AsyncGenerator[bytes, None]:
    events: asyncio.Queue[tuple[int, sse.Event | None]] = asyncio.Queue()

    async def pump(index: int, produce: Produce) -> None:
        parser = sse.Parser()

        async def parse(chunk: bytes) -> None:
            for event in parser.feed(chunk):
                await events.put((index, event))

        try:
            await produce(parse)
        finally:
            await events.put((index, None))

    pumps = [asyncio.ensure_future(pump(index, produce)) for index, produce in enumerate(streams)]
    try:
        yield b"".join(encoder.start() for encoder in encoders)
        running, prompt_tokens, completion_tokens = len(streams), 0, 0
        ended = set()
        while running:
            index, event = await events.get()
            encoder = encoders[index]
            if event is None:
                running -= 1
                if index not in ended:  # a relay always ends with done or error; this is a broken one
                    yield encoder.error("an answer ended without finishing", "worker_lost")
                    return
                continue
            if event.is_comment:  # cold-start and keep-alive comments as they came; each end marker stays here
                kept = [f": {line}\n\n" for line in event.comments if not line.startswith(END_MARK)]
                if kept:
                    yield "".join(kept).encode()
                continue
            data = event.json() if event.data else {}
            if event.name == "error":
                yield encoder.error(str(data.get("error")), str(data.get("code") or "generation_failed"))
                return
            if "token" in data:
                yield encoder.token(str(data["token"]), data.get("logprobs"))
            elif data.get("done"):
                ended.add(index)
                prompt_tokens = int(data.get("prompt_tokens", 0))
                completion_tokens += int(data.get("total_tokens", 0))
                yield encoder.choice_end(str(data.get("finish_reason")))
        yield encoders[0].stream_end(prompt_tokens, completion_tokens)
    finally:
        for task in pumps:
            task.cancel()  # each relay's own cleanup (its ticket, its worker's cancel) runs as it unwinds
        with contextlib.suppress(BaseException):
            await asyncio.gather(*pumps, return_exceptions=True)
