"""A gguf worker's prompts: chats rendered by the model's own template (with a marker where each image stands
when the model sees, backends/vision.py), and prompts tokenized the way the batch loop takes them.

A prompt is tokenized once: the count that checks it against the context before the stream begins is kept for
the generation that follows (and dropped, its image memory freed, if that generation never comes).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

from rbee.api.wire import ChatMessage
from rbee.worker.backends import ImageRefused, hf, vision


class Prompts:
    def __init__(self, model: Any, projector: vision.Projector | None, keep: int) -> None:
        from llama_cpp import llama_chat_format

        self._model = model
        self._projector = projector
        self._keep = keep
        self._lock = threading.Lock()
        self._counted: dict[str, vision.Tokenized] = {}
        """Prompts `counted` tokenized: the generation that follows takes their tokens as they are."""
        self._pictures: dict[str, list[bytes]] = {}
        """The images of the chats `render` rendered, by prompt, until the prompt is tokenized."""
        self._chat: Any = None
        template = model.metadata().get("tokenizer.chat_template")
        if template:
            eos, bos = model.token_eos(), model.token_bos()
            self._chat = llama_chat_format.Jinja2ChatFormatter(
                template=template,
                eos_token=model.token_get_text(eos) if eos != -1 else "",
                bos_token=model.token_get_text(bos) if bos != -1 else "",
                stop_token_ids=[eos],
            )

    def render(self, messages: Sequence[ChatMessage]) -> tuple[str, tuple[str, ...]]:
        """The prompt for a chat, and the stop strings its template implies."""
        pictures: list[bytes] = []
        if any(message.images for message in messages):
            if self._projector is None:
                raise ImageRefused("this model sees no images (hive.yaml gives it no mmproj)")
            dumped, pictures = self._projector.render(messages)
        else:
            dumped = [message.model_dump(exclude_none=True) for message in messages]
        if self._chat is None:
            prompt, stop = hf.plain_chat([ChatMessage.model_validate(message) for message in dumped])
        else:
            rendered = self._chat(messages=dumped)
            prompt, ends = rendered.prompt, rendered.stop
            stop = tuple(ends if isinstance(ends, list) else [ends] if ends else [])
        if pictures:
            with self._lock:
                self._pictures[prompt] = pictures
                while len(self._pictures) > self._keep:  # chats rendered and never tokenized (a refusal first)
                    self._pictures.pop(next(iter(self._pictures)))
        return prompt, stop

    def tokenize(self, prompt: str) -> vision.Tokenized:
        with self._lock:
            pictures = self._pictures.pop(prompt, None)
        if pictures and self._projector is not None:
            made = self._projector.tokenize(prompt, pictures, bos=True)
        else:
            made = vision.Tokenized(list(self._model.tokenize(prompt.encode("utf-8"), add_bos=True, special=True)))
        bos = self._model.token_bos()
        if len(made.tokens) > 1 and made.tokens[0] == bos and made.tokens[1] == bos:
            made.tokens.pop(0)  # the chat template wrote its own BOS
            made.images = {start - 1: image for start, image in made.images.items()}
        last = max(made.images, default=None)
        if last is not None and last + made.images[last].positions >= len(made.tokens):
            made.close()
            raise ImageRefused("the prompt ends with an image; put text after it")
        return made

    def count(self, prompt: str) -> int:
        made = self.tokenize(prompt)
        made.close()
        return len(made.tokens)

    def counted(self, prompt: str) -> vision.Tokenized:
        """The prompt tokenized, kept for the generation that follows."""
        made = self.tokenize(prompt)
        with self._lock:
            self._counted[prompt] = made
            while len(self._counted) > self._keep:  # requests that were refused after their count
                self._counted.pop(next(iter(self._counted))).close()
        return made

    def take(self, prompt: str) -> vision.Tokenized:
        """The prompt's tokens for its generation: those its check counted, or counted now."""
        with self._lock:
            made = self._counted.pop(prompt, None)
        return made if made is not None else self.tokenize(prompt)
