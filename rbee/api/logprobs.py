"""Log probabilities of answer tokens, in the shapes OpenAI's two text APIs give them.

An engine reports each token it generated as one entry, already in the chat API's shape:
    {"token": "Hello", "logprob": -0.31, "bytes": [72, 101, 108, 108, 111],
     "top_logprobs": [{"token": "Hello", "logprob": -0.31, "bytes": [...]}, ...]}
The legacy completions API lists the same facts column by column, with each token's offset in the text. No I/O.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

Entry = dict[str, Any]


def entry(piece: bytes, logprob: float, alternatives: Sequence[tuple[bytes, float]]) -> Entry:
    """One token's entry: `piece` its bytes (a character may span tokens, so the text is decoded leniently and
    `bytes` says exactly what it was), `alternatives` the most likely tokens at that step, most likely first."""

    def one(data: bytes, value: float) -> Entry:
        return {"token": data.decode("utf-8", errors="replace"), "logprob": round(value, 6), "bytes": list(data)}

    return {**one(piece, logprob), "top_logprobs": [one(data, value) for data, value in alternatives]}


def chat(entries: Sequence[Entry]) -> dict[str, Any]:
    """A chat choice's (or chunk's) `logprobs`."""
    return {"content": list(entries), "refusal": None}


def completion(entries: Sequence[Entry], offset: int = 0) -> dict[str, Any]:
    """A completions choice's `logprobs`; `offset`: where in the answer's text the first entry's token begins."""
    offsets = []
    for item in entries:
        offsets.append(offset)
        offset += len(item["token"])
    return {
        "tokens": [item["token"] for item in entries],
        "token_logprobs": [item["logprob"] for item in entries],
        "top_logprobs": [{top["token"]: top["logprob"] for top in item["top_logprobs"]} for item in entries],
        "text_offset": offsets,
    }
