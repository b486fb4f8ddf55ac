"""Images in chat messages, as the client APIs send them, into the worker's `ChatImage`.

An image comes inline (a `data:` URL, or Anthropic's base64 source) or not at all: the queen fetches no URL on a
client's behalf, since a request could then make it reach any address its network can (an SSRF, like the
image-URL advisories of other servers). The bytes are checked as base64 here and read as pictures by the worker.
"""

from __future__ import annotations

import base64
import binascii

from rbee.api.wire import ChatImage, Unsupported

MEDIA_TYPES = ("image/png", "image/jpeg", "image/gif", "image/bmp")
"""What llama.cpp's image reader takes."""
MAX_IMAGES = 8
"""Images in one request: each is encoded before the first token, and holds its slot's context."""


def from_url(url: str, at: int, param: str) -> ChatImage:
    """An OpenAI `image_url` part's URL, which must be a base64 `data:` URL."""
    head, comma, data = url.partition(",")
    if not head.startswith("data:"):
        raise Unsupported(
            param,
            f"{written(param)} is an image by URL; rbee fetches no URL for a client, so send the image inline as a "
            "data: URL (data:image/png;base64,...)",
        )
    media_type, _, encoding = head[len("data:") :].partition(";")
    if not comma or encoding != "base64":
        raise Unsupported(param, f"{written(param)} must be a base64 data: URL (data:image/png;base64,...)")
    return from_base64(media_type, data, at, param)


def from_base64(media_type: str, data: str, at: int, param: str) -> ChatImage:
    """An image given as its media type and base64 bytes (a data: URL's parts, Anthropic's base64 source)."""
    if media_type.lower() not in MEDIA_TYPES:
        raise Unsupported(param, f"{written(param)} is {media_type or 'of no type'}; send {', '.join(MEDIA_TYPES)}")
    try:
        base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise Unsupported(param, f"{written(param)} is not valid base64") from None
    return ChatImage(data=data, at=at)


def unseen(param: str, model: str, where: str | None = None) -> Unsupported:
    """The refusal of an image for a model without a projector; `where` is the part as the client's API writes
    it (`param` itself unless given)."""
    return Unsupported(
        param,
        f"{where or param} is an image and the model {model} sees no images; give the model an mmproj (a "
        "multimodal projector) in hive.yaml, or send text only",
    )


def within_limit(count: int, param: str) -> None:
    if count > MAX_IMAGES:
        raise Unsupported(param, f"the request holds {count} images; send at most {MAX_IMAGES}")


def written(param: str) -> str:
    """`messages.0.content.1` as the client wrote it: messages[0].content[1]."""
    head, *indexes = param.split(".")
    return head + "".join(f"[{part}]" if part.isdigit() else f".{part}" for part in indexes)
