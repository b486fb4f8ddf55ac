"""OpenAI's embeddings request and response bodies (pure): texts in, float or base64 float32 vectors out."""

from __future__ import annotations

import array
import base64
import sys
from collections.abc import Sequence
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class EmbeddingRequest(BaseModel):
    model_config = ConfigDict(extra="allow")

    model: str
    input: str | Annotated[list[str], Field(min_length=1, max_length=2048)]
    encoding_format: Literal["float", "base64"] = "float"

    @property
    def texts(self) -> list[str]:
        return [self.input] if isinstance(self.input, str) else list(self.input)


def embedding_response(model: str, vectors: Sequence[list[float] | str], tokens: int, encoding: str) -> dict[str, Any]:
    """The OpenAI body for `vectors`, given as float lists or as base64 float32 (little-endian) strings."""

    def encode(vector: list[float] | str) -> list[float] | str:
        if encoding == "base64":
            return vector if isinstance(vector, str) else base64.b64encode(_float32(vector)).decode()
        if isinstance(vector, str):
            values = array.array("f", base64.b64decode(vector))
            if sys.byteorder == "big":
                values.byteswap()
            return values.tolist()
        return vector

    return {
        "object": "list",
        "data": [{"object": "embedding", "index": i, "embedding": encode(v)} for i, v in enumerate(vectors)],
        "model": model,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }


def _float32(vector: list[float]) -> bytes:
    values = array.array("f", vector)
    if sys.byteorder == "big":
        values.byteswap()
    return values.tobytes()
