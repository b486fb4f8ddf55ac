"""What the engines that speak through a Hugging Face tokenizer share (torch, mlx, ctransformers): chat
templates, prompt encoding, the context check, and incremental detokenization."""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator, Sequence
from typing import Any

from rbee.api.wire import ChatMessage
from rbee.worker.backends import BackendError, Generation, PromptTooLong, handed_over


def plain_chat(messages: Sequence[ChatMessage]) -> tuple[str, tuple[str, ...]]:
    """A chat as plain `role: text` lines, for a model without a template, and the stop that ends its turn."""
    text = "".join(f"{message.role}: {message.content or ''}\n" for message in messages)
    return text + "assistant:", ("\nuser:",)


def render_chat(tokenizer: Any, messages: Sequence[ChatMessage]) -> tuple[str, tuple[str, ...]]:
    """The prompt for a chat from the tokenizer's own template (plain lines without one)."""
    if tokenizer is None or not getattr(tokenizer, "chat_template", None):
        return plain_chat(messages)
    chat = [message.model_dump(exclude_none=True) for message in messages]
    try:
        return str(tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)), ()
    except Exception as error:  # jinja's own errors, for a template that rejects these messages
        raise BackendError(f"the model's chat template failed: {error}") from None


def encode(tokenizer: Any, prompt: str, context: int) -> list[int]:
    """The prompt's token ids (a BOS added unless a chat template already wrote one), refused when it leaves no
    room in the context."""
    bos = tokenizer.bos_token or ""
    ids: list[int] = tokenizer(prompt, add_special_tokens=not (bos and prompt.startswith(bos)))["input_ids"]
    if len(ids) >= context:
        raise PromptTooLong(f"the prompt is {len(ids)} tokens and the model's context holds {context}; shorten it")
    return ids


def count(tokenizer: Any, prompt: str) -> int:
    """How many tokens the prompt is, counted as `encode` would (mlx-lm's wrapper holds the HF tokenizer)."""
    return len(encode(getattr(tokenizer, "_tokenizer", tokenizer), prompt, 1 << 62))


class TokenText:
    """Incremental detokenization over a short window: text is released only once it is complete (a token may
    end inside a UTF-8 character, which decodes to U+FFFD until the next one arrives)."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.tokens: list[int] = []
        self.prefix = self.read = 0

    def add(self, token: int) -> str:
        self.tokens.append(token)
        before = self.tokenizer.decode(self.tokens[self.prefix : self.read], skip_special_tokens=True)
        after = self.tokenizer.decode(self.tokens[self.prefix :], skip_special_tokens=True)
        if len(after) <= len(before) or after.endswith("\ufffd"):
            return ""
        self.prefix, self.read = self.read, len(self.tokens)
        return str(after[len(before) :])


def token_texts(
    tokenizer: Any, out: queue.SimpleQueue[Any], cancel: threading.Event, result: Generation
) -> Iterator[bytes]:
    """A batch loop's tokens for one request as text, detokenized here, in the request's own thread."""
    text = TokenText(tokenizer)
    for token in handed_over(out, cancel, result):
        yield text.add(token).encode("utf-8")
