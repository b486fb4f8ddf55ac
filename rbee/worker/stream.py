"""A generation, streamed: the engine runs in one of the worker's generation threads (one per slot) and hands
its text pieces to the event loop through a mailbox; the loop encodes them in the client's wire format and
writes them out.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from collections.abc import AsyncIterator
from typing import Any

from rbee.api import anthropic, openai_stream, responses, wire
from rbee.api.state import WorkerState
from rbee.worker import backends
from rbee.worker.runtime import Active, Runtime, release

log = logging.getLogger("rbee.worker")
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
KEEP_ALIVE = 1.0
"""Seconds without a token after which the worker sends an SSE comment: a long prompt's prefill, or a step of a
batch busy with other requests' prompts on a loaded machine. The queen takes a stream that sends nothing for its
idle timeout (60 s by default, as low as the operator sets it) for frozen, and one that stalls while its hive is
silent for cut off; a live worker must never look like either."""
STOPPED = "the worker was stopped (scale-down, idle parking or destroy) before the answer was complete"


Encoder = wire.Encoder


def encoder_for(body: wire.ExecuteRequest, model: str) -> Encoder:
    """The wire format the request asked for: rbee's events, or OpenAI's chunks (the queen relays them as they are)."""
    if body.format is wire.StreamFormat.RBEE:
        return wire.EventEncoder()
    tools = body.constraint.tools if body.constraint is not None and body.constraint.kind == "tool_call" else ()
    if body.format is wire.StreamFormat.ANTHROPIC:
        messages = anthropic.StreamEncoder(body.request_id, body.openai_model or model)
        return anthropic.ToolUseStream(messages, tools) if tools else messages
    if body.format is wire.StreamFormat.OPENAI_RESPONSES:
        answers = responses.StreamEncoder(body.request_id, body.openai_model or model)
        return responses.ToolCallStream(answers, tools) if tools else answers
    chat = body.format is wire.StreamFormat.OPENAI_CHAT
    encoder = openai_stream.StreamEncoder(body.request_id, body.openai_model or model, chat, body.include_usage)
    return openai_stream.ToolCallStream(encoder, tools) if chat and tools else encoder


STREAM_PACE = 0.005
"""While tokens come faster than this (seconds), the worker writes them in batches at this pace: at most 200
writes a second per stream, which no reader can tell from one write per token."""


class Mailbox:
    """From the generation thread to the event loop. Items queue without a lock (deque appends are atomic).

    Each cross-thread wake-up costs a syscall and a hand-off of the GIL, which a fast engine (under a millisecond
    a token) pays as a third of its speed, and every wake-up of the loop takes a core from an engine that uses
    them all. So the producer wakes the loop only when the loop is asleep. While tokens come faster than `pace`,
    the loop, after taking a batch, looks again `pace` seconds later and takes everything that came meanwhile;
    once they come slower, it sleeps until the next one (one wake-up a token, no timer). The first batch is
    paced; the end of the generation always wakes the loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop, pace: float) -> None:
        self.loop = loop
        self.pace = pace
        self.items: collections.deque[tuple[str, Any]] = collections.deque()
        self.ready = asyncio.Event()
        self.asleep = True
        self.hurried = True
        self.last: float | None = None

    def put(self, item: tuple[str, Any], *, final: bool = False) -> None:
        self.items.append(item)
        if self.asleep or final:
            self.asleep = False
            self.loop.call_soon_threadsafe(self.ready.set)

    async def take(self, patience: float | None = None) -> list[tuple[str, Any]]:
        """What came since the last take; [] when nothing came for `patience` seconds (a timer only while the
        loop would sleep for the next item, which at speed it never does)."""
        if self.hurried and self.last is not None:
            pause = self.last + self.pace - self.loop.time()
            if pause > 0:
                timer = self.loop.call_later(pause, self.ready.set)
                try:
                    await self.ready.wait()
                finally:
                    timer.cancel()
        slept = False
        while not self.items:
            self.ready.clear()
            self.asleep = True
            if self.items:  # a put that came before `asleep` was set did not wake us
                break
            slept = True
            if patience is None:
                await self.ready.wait()
                continue
            timer = self.loop.call_later(patience, self.ready.set)
            try:
                await self.ready.wait()
            finally:
                timer.cancel()
            if not self.items:
                self.ready.clear()
                return []
        self.ready.clear()
        now = self.loop.time()
        self.hurried = self.last is None or not slept or now - self.last < self.pace
        self.asleep = not self.hurried
        self.last = now
        taken = []
        while self.items:
            taken.append(self.items.popleft())
        return taken


async def stream(
    runtime: Runtime,
    request: Active,
    engine: backends.Backend,
    prompt: str,
    options: wire.SamplingOptions,
    encoder: Encoder,
) -> AsyncIterator[bytes]:
    """Run the generation in a thread and relay its pieces; a client that goes away cancels it."""
    mailbox = Mailbox(asyncio.get_running_loop(), STREAM_PACE)
    result = backends.Generation()
    cancel = request.cancel

    def produce() -> None:
        sent = 0  # of result.logprobs: those already sent with the text they made
        try:
            for piece in engine.generate(prompt, options, cancel, result):
                if options.logprobs is None:
                    mailbox.put(("piece", (piece, None)))
                    continue
                upto = min(result.read, len(result.logprobs))
                mailbox.put(("piece", (piece, result.logprobs[sent:upto])))
                sent = upto
            mailbox.put(("done", None), final=True)
        except backends.BackendError as error:
            mailbox.put(("error", str(error)), final=True)
        except Exception as error:  # an engine crash must still end the stream with an error event
            log.exception("generation failed")
            mailbox.put(("error", f"generation failed: {error}"), final=True)

    request.streaming = True
    timed_out = False

    def time_is_up() -> None:
        nonlocal timed_out
        timed_out = True
        cancel.set()  # the engine sees it within one token

    limit = getattr(options, "time_limit", None)
    timer = asyncio.get_running_loop().call_later(limit, time_is_up) if limit else None
    job = runtime.generation_threads.submit(produce)
    try:
        opening = encoder.start()  # sent with the first token, so a client's first bytes hold text
        while True:
            items = await mailbox.take(KEEP_ALIVE)
            if not items:  # the worker lives: say so before the queen's idle timeout takes it for frozen
                yield b": keep-alive\n\n"
                continue
            # Pieces that arrived while the last write went out leave in one write, as separate events.
            events = [encoder.token(*value) for kind, value in items if kind == "piece"]
            if events:
                yield opening + b"".join(events)
                opening = b""
            kind, value = items[-1]
            if kind == "piece":
                continue
            # The engine is done: become idle before the last event, so whoever reads it may send the next
            # request at once.
            await asyncio.wrap_future(job)
            # Stopped by rbee (scale-down, park, destroy), not by its client: a cut answer must not look finished.
            stopped = result.finish_reason is wire.FinishReason.CANCELLED and runtime.state is WorkerState.STOPPING
            release(runtime, request)
            reason = str(result.finish_reason)
            cut = result.finish_reason is wire.FinishReason.CANCELLED and timed_out
            if kind == "done" and not stopped and not cut:
                end = wire.end_comment(
                    result.prompt_tokens, result.completion_tokens, reason, cached_tokens=result.cached_tokens
                )
                yield opening + end + encoder.finish(reason, result.prompt_tokens, result.completion_tokens)
            else:
                if cut:
                    message, code = f"the answer ran past its time limit of {limit:g} s (request_timeout)", "time_limit"
                elif stopped:
                    message, code = STOPPED, "worker_stopped"
                else:
                    message, code = str(value), "generation_failed"
                end = wire.end_comment(result.prompt_tokens, result.completion_tokens, "error", message)
                yield opening + end + encoder.error(message, code)
            return
    finally:
        if timer is not None:
            timer.cancel()
        # No await here: a client that went away cancels this task, and every await would raise again.
        # The engine sees `cancel` within one token and holds its own lock, so the next request waits for it.
        cancel.set()
        release(runtime, request)
