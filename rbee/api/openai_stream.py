"""OpenAI's stream shapes, written a token at a time: chat and completions chunks with the per-chunk JSON
precomputed around the text, a tool call held until it is whole, and one choice's chunks among several (n > 1).

A worker asked for OpenAI's wire format writes these bytes itself, so the queen passes them through without
parsing each event. No I/O here.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from typing import Any

from rbee.api import logprobs as lp
from rbee.api.calls import HeldCall
from rbee.api.openai import chat_chunk, completion_chunk, error, openai_finish, tool_calls, usage


def _dump(value: Any) -> bytes:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode()


def frame(payload: dict[str, Any]) -> bytes:
    return b"data: " + _dump(payload) + b"\n\n"


DONE = b"data: [DONE]\n\n"


class StreamEncoder:
    """One choice's chunks (`index`, 0 unless the request asked for several), then the stream's end."""

    def __init__(
        self,
        request_id: str,
        model: str,
        chat: bool,
        include_usage: bool,
        created: int | None = None,
        index: int = 0,
    ) -> None:
        self.request_id, self.model, self.chat, self.include_usage = request_id, model, chat, include_usage
        self.created = created or int(time.time())
        self.index = index
        self.offset = 0
        """Characters of the answer sent so far (the completions API's text_offset)."""
        head = {
            "id": request_id,
            "object": "chat.completion.chunk" if chat else "text_completion",
            "created": self.created,
            "model": model,
        }
        prefix = _dump(head)[:-1] + b',"choices":[{"index":' + str(index).encode()
        if chat:
            self._before = b"data: " + prefix + b',"delta":{"content":'
            self._after = b'},"logprobs":null,"finish_reason":null}]}\n\n'
        else:
            self._before = b"data: " + prefix + b',"text":'
            self._after = b',"logprobs":null,"finish_reason":null}]}\n\n'

    def _frame(self, chunk: dict[str, Any]) -> bytes:
        for choice in chunk["choices"]:
            choice["index"] = self.index
        return frame(chunk)

    def start(self) -> bytes:
        if not self.chat:
            return b""
        delta = {"role": "assistant", "content": ""}
        return self._frame(chat_chunk(self.request_id, self.model, self.created, delta, None))

    def token(self, text: str, logprobs: Sequence[lp.Entry] | None = None) -> bytes:
        if logprobs is None:
            return self._before + _dump(text) + self._after
        if self.chat:
            delta = {"content": text}
            return self._frame(
                chat_chunk(self.request_id, self.model, self.created, delta, None, None, lp.chat(logprobs))
            )
        block = lp.completion(logprobs, self.offset)
        self.offset += len(text)
        return self._frame(completion_chunk(self.request_id, self.model, self.created, text, None, None, block))

    def choice_end(self, reason: str) -> bytes:
        """This choice's last chunk: its finish reason."""
        finish = openai_finish(reason)
        if self.chat:
            return self._frame(chat_chunk(self.request_id, self.model, self.created, {}, finish))
        return self._frame(completion_chunk(self.request_id, self.model, self.created, "", finish))

    def stream_end(self, prompt_tokens: int, completion_tokens: int) -> bytes:
        """After every choice has ended: the usage chunk when asked for, then [DONE]."""
        out = b""
        if self.include_usage:
            block = usage(prompt_tokens, completion_tokens)
            out = frame(
                chat_chunk(self.request_id, self.model, self.created, {}, None, block)
                if self.chat
                else completion_chunk(self.request_id, self.model, self.created, "", None, block)
            )
        return out + DONE

    def finish(self, reason: str, prompt_tokens: int, completion_tokens: int) -> bytes:
        return self.choice_end(reason) + self.stream_end(prompt_tokens, completion_tokens)

    def error(self, message: str, code: str) -> bytes:
        return frame(error(message, "api_error", code)) + DONE


class ToolCallStream(HeldCall):
    """OpenAI's chat stream of an answer that may be a tool call: the call goes out as one tool_calls delta, with
    finish_reason tool_calls."""

    inner: StreamEncoder

    def call(self, name: str, arguments: dict[str, Any], prompt_tokens: int, completion_tokens: int) -> bytes:
        inner = self.inner
        delta = {"tool_calls": [{"index": 0, **tool_calls(inner.request_id, name, arguments)[0]}]}
        out = inner._frame(chat_chunk(inner.request_id, inner.model, inner.created, delta, None))
        return out + inner.finish("tool_calls", prompt_tokens, completion_tokens)
