"""Engines behind one small protocol: load with progress, generate a stream of text pieces, cancel, unload."""

from __future__ import annotations

import contextlib
import importlib
import queue
import threading
from collections.abc import AsyncIterator, Callable, Generator, Iterable, Iterator, Sequence, Sized
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar, runtime_checkable

from rbee.api.calls import Constraint
from rbee.api.image_generation import ImageRequest, Picture
from rbee.api.wire import ChatMessage, FinishReason, SamplingOptions
from rbee.spec import backends as capabilities
from rbee.worker.text import TextAssembler


class BackendError(Exception):
    """A request the engine cannot serve (prompt too long, bad template); the message says why."""


@dataclass
class Generation:
    """Filled in while a generation runs; read after its iterator is exhausted."""

    prompt_tokens: int = 0
    cached_tokens: int = 0
    """Of the prompt's tokens, those already in the engine's cache (a shared prefix): not evaluated again."""
    completion_tokens: int = 0
    finish_reason: FinishReason = FinishReason.STOP
    logprobs: list[dict[str, Any]] = field(default_factory=list)
    """With options.logprobs: one entry per answer token (api/logprobs.py), appended by the engine as it goes."""
    read: int = 0
    """How many of the engine's tokens have become text so far: the stream sends their logprobs with it."""


class Backend(Protocol):
    """A text generator."""

    name: str
    device: str

    def load(self, progress: Callable[[float], None]) -> None: ...

    def render_chat(self, messages: Sequence[ChatMessage]) -> tuple[str, tuple[str, ...]]:
        """The prompt for a chat, and the stop strings its template implies."""
        ...

    def generate(
        self, prompt: str, options: SamplingOptions, cancel: threading.Event, result: Generation
    ) -> Iterator[str]: ...

    def unload(self) -> None: ...


class PromptTooLong(BackendError):
    """The prompt does not fit the model's context: the client's mistake, answered 400 before any generation."""

    code = "context_length_exceeded"


class ImageRefused(PromptTooLong):
    """An image the engine cannot take (it sees none, or cannot read it): the client's 400, before generating."""

    code = "invalid_image"


def room_for(engine: Engine, prompt: str) -> PromptTooLong | None:
    """Why `prompt` cannot be answered by `engine` (too long for its context, an image it cannot read), if the
    engine can tell; None when it fits or the engine cannot count before it generates."""
    check = getattr(engine, "check_prompt", None)
    if check is None:
        return None
    try:
        check(prompt)
    except PromptTooLong as error:
        return error
    return None


def cannot_constrain(engine: Engine, constraint: Constraint | None) -> str | None:
    """Why `engine` cannot hold its answer to `constraint` (it masks no tokens, or the schema does not compile);
    None when there is nothing to constrain or it can."""
    if constraint is None:
        return None
    check = getattr(engine, "check_constraint", None)
    if check is None:
        return f"the {engine.name} backend cannot constrain its output; serve the model with gguf, torch or mlx"
    try:
        check(constraint)
    except BackendError as error:
        return str(error)
    return None


def cannot_sample(engine: Engine, options: SamplingOptions) -> tuple[str, str] | None:
    """The field, and why, of a sampling option `engine` does not serve (or a logit_bias token outside its
    vocabulary); None when it serves them all."""
    served: frozenset[str] = getattr(engine, "sampling", frozenset())
    for name in options.extras():
        if name not in served:
            return name, f"{name} is not served by the {engine.name} backend; serve the model with gguf, torch or mlx"
    size: int | None = getattr(engine, "vocabulary_size", lambda: None)()
    outside = [token for token, _ in options.logit_bias if size is not None and token >= size]
    if outside and size is not None:
        return "logit_bias", f"logit_bias names token {outside[0]}; the model's tokens are 0 to {size - 1}"
    return None


class OneAtATime:
    """The text engines' `generate`: nothing before the model is loaded, one generation at a time (an engine
    holds one context), and stop strings. Subclasses set `_lock` and implement `_loaded` and `_generate`, which
    yields each token's bytes (a character may span tokens) and sets the finish reason it knows."""

    _lock: threading.Lock

    def _loaded(self) -> bool:
        raise NotImplementedError

    def _generate(
        self, prompt: str, options: SamplingOptions, cancel: threading.Event, result: Generation
    ) -> Generator[bytes, None, None]:
        raise NotImplementedError

    def generate(
        self, prompt: str, options: SamplingOptions, cancel: threading.Event, result: Generation
    ) -> Iterator[str]:
        if not self._loaded():
            raise BackendError("the model is not loaded")
        # closing(): an engine left at a stop string ends (and frees what it holds) before the lock is released
        with self._lock, contextlib.closing(self._generate(prompt, options, cancel, result)) as stream:
            yield from text_pieces(stream, options.stop, result)


T = TypeVar("T")


def handed_over(
    out: queue.SimpleQueue[T | FinishReason | BackendError], cancel: threading.Event, result: Generation
) -> Iterator[T]:
    """What a batch loop hands one request (its tokens, as the loop makes them) until it says how the answer
    ended: a finish reason (kept on `result`) or an error (raised). Tokens the loop made before it saw a cancel
    are not handed over: the loop runs ahead of its readers."""
    while True:
        item = out.get()
        if cancel.is_set():
            result.finish_reason = FinishReason.CANCELLED
            return
        if isinstance(item, FinishReason):
            result.finish_reason = item
            return
        if isinstance(item, BackendError):
            raise item
        yield item


def joining(
    wake: threading.Condition, waiting: list[Any], active: Sized, slots: int, closing: Callable[[], bool]
) -> list[Any] | None:
    """For a batch loop: wait (under `wake`) until a request is active or waiting, then the waiting ones that join
    now, as many as the free slots take; None once the loop is closing."""
    with wake:
        while not closing() and not active and not waiting:
            wake.wait()
        if closing():
            return None
        joined: list[Any] = []
        while waiting and len(active) + len(joined) < slots:
            joined.append(waiting.pop(0))
        return joined


def served(
    wake: threading.Condition,
    waiting: list[Any],
    sequence: Any,
    stream: Iterable[bytes],
    stop: Sequence[str],
    result: Generation,
) -> Iterator[str]:
    """A request handed to a batch loop (appended to its `waiting`, under `wake`) and its text as the loop makes
    it; once its reader stops (a stop string, a client gone) the loop is told to let it go at its next step."""
    with wake:
        waiting.append(sequence)
        wake.notify()
    try:
        yield from text_pieces(stream, stop, result)
    finally:
        sequence.left = True
        with wake:
            wake.notify()


def text_pieces(stream: Iterable[bytes], stop: Sequence[str], result: Generation) -> Iterator[str]:
    """Token bytes in, text out (incremental UTF-8): a stop string ends it with finish reason `stop`, and what is
    held back at the end (an unfinished stop string is just text) is released unless the answer was cancelled."""
    assembler = TextAssembler(stop)
    for data in stream:
        result.read += 1
        piece = assembler.feed(data)
        if piece:
            yield piece
        if assembler.stopped:
            result.finish_reason = FinishReason.STOP
            return
    if result.finish_reason is not FinishReason.CANCELLED:
        tail = assembler.flush()
        if tail:
            yield tail


@runtime_checkable
class Embedder(Protocol):
    """A text embedder: batches of texts in, vectors out."""

    name: str
    device: str
    kind: str

    def load(self, progress: Callable[[float], None]) -> None: ...

    def embed(self, texts: Sequence[str]) -> tuple[Any, int]:
        """A float32 numpy array with one row per text, and the token count."""
        ...

    def unload(self) -> None: ...


@runtime_checkable
class Reranker(Protocol):
    """A cross-encoder: a query and documents in, one relevance score per document out."""

    name: str
    device: str
    kind: str

    def load(self, progress: Callable[[float], None]) -> None: ...

    def rerank(self, query: str, documents: Sequence[str]) -> tuple[list[float], int]:
        """The documents' scores, in their order, and the token count."""
        ...

    def unload(self) -> None: ...


@runtime_checkable
class Speaker(Protocol):
    """Text in, speech out: 16-bit mono samples at `rate`, as they are made."""

    name: str
    device: str
    kind: str
    rate: int

    def load(self, progress: Callable[[float], None]) -> None: ...

    def voice(self, name: str) -> str | None:
        """The engine's voice for a request's `voice`; None when it has none by that name."""
        ...

    def voices(self) -> str:
        """The voices it has, in a sentence, for the refusal of one it does not."""
        ...

    def speak(self, text: str, voice: str, speed: float) -> AsyncIterator[bytes]: ...

    def unload(self) -> None: ...


@runtime_checkable
class Transcriber(Protocol):
    """Audio in, text out."""

    name: str
    device: str
    kind: str

    def load(self, progress: Callable[[float], None]) -> None: ...

    def check_language(self, language: str | None) -> None:
        """BackendError naming the languages it knows, for one it does not."""
        ...

    def transcribe(
        self, samples: Any, rate: int, language: str | None, task: str, prompt: str | None, temperature: float
    ) -> dict[str, Any]:
        """`{"text", "language", "duration", "segments"}` of mono float32 `samples` at `rate`."""
        ...

    def unload(self) -> None: ...


@runtime_checkable
class Painter(Protocol):
    """Text in, pictures out: a diffusion pipeline, one request at a time, a step at a time."""

    name: str
    device: str
    kind: str
    size: tuple[int, int]
    """Its own width and height."""

    def load(self, progress: Callable[[float], None]) -> None: ...

    def check(self, request: ImageRequest) -> None:
        """Raise for a field of `request` this pipeline does not take (with `param` naming it)."""
        ...

    def paint(
        self, request: ImageRequest, report: Callable[[str, Any], None], cancel: threading.Event
    ) -> list[Picture]: ...

    def unload(self) -> None: ...


Engine = Backend | Embedder | Reranker | Speaker | Transcriber | Painter
"""What a worker process serves: a text generator, an embedder, a reranker, a speaker, a transcriber or a
painter."""


def create(
    backend: str,
    model_path: str,
    device: str,
    threads: int | None,
    shape: tuple[int | None, int | None] = (None, None),
    mmproj_path: str | None = None,
) -> Engine:
    """The engine of `backend` (spec/backends.py's table), imported only now: each engine's import is heavy.
    `shape` (slots, context per slot) goes to the engines that batch; the others serve one request at a time.
    `mmproj_path`, a multimodal projector, only to the engines that see (`sees`)."""
    try:
        known = capabilities.Backend(backend)
    except ValueError:
        raise BackendError(f"the {backend} backend is not available in this rbee yet") from None
    module = importlib.import_module(f"rbee.worker.backends.{known}")
    slots, context = shape
    sized = {"slots": slots, "context": context} if getattr(module.ENGINE, "batches", False) else {}
    if mmproj_path is not None and not getattr(module.ENGINE, "sees", False):
        raise BackendError(f"the {backend} backend takes no multimodal projector; serve the model with gguf")
    seeing = {"mmproj_path": mmproj_path} if mmproj_path is not None else {}
    engine: Engine = module.ENGINE(model_path, device=device, threads=threads, **sized, **seeing)
    return engine
