"""Image generation's requests and answers (pure): OpenAI's `POST /v1/images/generations` (what the openai
clients, Open WebUI and LibreChat send) translated into the image worker's request, and the worker's answer in
rbee's own shape or in OpenAI's, whole or as a stream of progress events.

The worker's own request is the design's: `{"prompt", "width", "height"}` in, `{"images": [{"format": "png",
"data", "width", "height"}]}` out. With `stream`, the worker says how the denoising goes, a step at a time, and
may send previews (OpenAI's partial images) before the finished pictures.
"""

from __future__ import annotations

import time
from enum import StrEnum
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from rbee.api import openai as oai
from rbee.api.wire import Unsupported, error_event, refuse_unserved, sse

SIDE = (64, 2048)
"""The smallest and largest side in pixels a request may ask for."""
MULTIPLE = 8
"""Sides are multiples of this: latent diffusion works on an image shrunk by 8 (its autoencoder's factor)."""
MAX_IMAGES = 10
"""OpenAI's own bound on `n`."""
MAX_PARTIALS = 3
"""OpenAI's bound on `partial_images`."""
MAX_PROMPT = 4000


class ImageFormat(StrEnum):
    PNG = "png"
    JPEG = "jpeg"
    WEBP = "webp"


IMAGE_TYPES = {ImageFormat.PNG: "image/png", ImageFormat.JPEG: "image/jpeg", ImageFormat.WEBP: "image/webp"}


class Events(StrEnum):
    """Which vocabulary a streaming worker speaks: rbee's events, or OpenAI's image stream events."""

    RBEE = "rbee"
    OPENAI = "openai"


Side = Annotated[int, Field(ge=SIDE[0], le=SIDE[1], multiple_of=MULTIPLE)]


class ImageRequest(BaseModel):
    """The body of an image worker's `POST /v1/execute`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    request_id: Annotated[str, Field(min_length=1, max_length=128)] = "anonymous"
    prompt: Annotated[str, Field(min_length=1, max_length=MAX_PROMPT)]
    negative_prompt: Annotated[str, Field(max_length=MAX_PROMPT)] | None = None
    width: Side | None = None
    """None: the model's own size."""
    height: Side | None = None
    n: Annotated[int, Field(ge=1, le=MAX_IMAGES)] = 1
    steps: Annotated[int, Field(ge=1, le=200)] | None = None
    """Denoising steps; None: the pipeline's default."""
    guidance_scale: Annotated[float, Field(ge=0, le=50)] | None = None
    seed: Annotated[int, Field(ge=0, lt=2**63)] | None = None
    """Image k of the request starts from noise seeded with seed + k: the same request gives the same bytes.
    None: the worker draws one, and says which in its answer."""
    format: ImageFormat = ImageFormat.PNG
    quality: Annotated[int, Field(ge=0, le=100)] | None = None
    """JPEG and WebP: the encoder's quality (OpenAI's output_compression)."""
    stream: bool = False
    """Answer as Server-Sent Events: progress a step at a time, then the images."""
    events: Events = Events.RBEE
    partial_images: Annotated[int, Field(ge=0, le=MAX_PARTIALS)] = 0
    """Previews of the first image while it is being denoised (streams only)."""
    time_limit: Annotated[float, Field(gt=0)] | None = None
    """Seconds the worker may spend; past them the answer ends with a `time_limit` error."""

    @model_validator(mode="after")
    def _partials_stream(self) -> ImageRequest:
        if self.partial_images and not self.stream:
            raise ValueError("partial_images needs stream: true; the previews are stream events")
        return self


class Picture(BaseModel):
    """One finished (or preview) image, encoded."""

    model_config = ConfigDict(frozen=True)

    format: ImageFormat
    data: str
    """The encoded file's bytes, in base64."""
    width: int
    height: int
    seed: int | None = None


class ImageEvents:
    """A streaming image worker's bytes in rbee's vocabulary: `{"step", "steps"}` per denoising step, `{"partial":
    picture, "index"}` per preview, `{"images": [...], "seed"}` once, and rbee's error event."""

    def __init__(self, request: ImageRequest) -> None:
        self.request = request

    def progress(self, step: int, steps: int) -> bytes:
        return sse({"step": step, "steps": steps})

    def partial(self, index: int, picture: Picture) -> bytes:
        return sse({"partial": picture.model_dump(exclude_none=True), "index": index})

    def images(self, pictures: list[Picture]) -> bytes:
        return sse({"images": [picture.model_dump(exclude_none=True) for picture in pictures]})

    def error(self, message: str, code: str) -> bytes:
        return error_event(message, code)


class OpenAIImageEvents(ImageEvents):
    """The same in OpenAI's image stream vocabulary: `image_generation.partial_image` and
    `image_generation.completed` (one per image), with rbee's step progress as `rbee.image_generation.progress`
    events (the openai clients hand an unknown event type on as it is)."""

    def __init__(self, request: ImageRequest) -> None:
        super().__init__(request)
        self.created = int(time.time())

    def _common(self, picture: Picture) -> dict[str, Any]:
        return {
            "b64_json": picture.data,
            "created_at": self.created,
            "size": f"{picture.width}x{picture.height}",
            "quality": "auto",
            "background": "opaque",
            "output_format": str(picture.format),
        }

    def progress(self, step: int, steps: int) -> bytes:
        return sse({"type": "rbee.image_generation.progress", "step": step, "steps": steps})

    def partial(self, index: int, picture: Picture) -> bytes:
        return sse({"type": "image_generation.partial_image", **self._common(picture), "partial_image_index": index})

    def images(self, pictures: list[Picture]) -> bytes:
        return b"".join(
            sse({"type": "image_generation.completed", **self._common(picture), "usage": NO_TOKENS})
            for picture in pictures
        )

    def error(self, message: str, code: str) -> bytes:
        return sse(oai.error(message, "api_error", code))


NO_TOKENS = {
    "input_tokens": 0,
    "input_tokens_details": {"image_tokens": 0, "text_tokens": 0},
    "output_tokens": 0,
    "total_tokens": 0,
}
"""OpenAI counts its GPT image models' work in tokens; a diffusion model's has no such count."""


def events_for(request: ImageRequest) -> ImageEvents:
    return OpenAIImageEvents(request) if request.events is Events.OPENAI else ImageEvents(request)


NOT_YET = {
    "quality": "quality levels belong to OpenAI's models; ask for more steps with rbee's steps field",
    "style": "style (vivid, natural) belongs to retired DALL-E models; describe the style in the prompt",
    "background": "transparent backgrounds are not made by diffusion models served here",
    "moderation": "rbee runs no moderation model on images",
    "response_format": "rbee keeps no image files to link to; ask for b64_json",
    "complexity": "planning effort belongs to OpenAI's models",
    "frame_count": "animated images are not made here",
    "frame_duration_ms": "animated images are not made here",
    "svg": "SVG is not made here",
}
NEUTRAL: dict[str, tuple[Any, ...]] = {
    "quality": ("auto", "standard", None),
    "style": (None,),
    "background": ("auto", "opaque", None),
    "moderation": ("auto", None),
    "response_format": ("b64_json", None),
}
NO_OPS = ("user", "safety_identifier")
"""An end user's identifier for OpenAI's abuse monitoring: rbee keeps none, and needs none to answer."""


class ImageGenerationRequest(BaseModel):
    """OpenAI's `POST /v1/images/generations`, with rbee's fields for what diffusion models take and OpenAI's
    models do not (`negative_prompt`, `steps`, `guidance_scale`, `seed`)."""

    model_config = ConfigDict(extra="allow")

    model: str
    prompt: Annotated[str, Field(min_length=1, max_length=MAX_PROMPT)]
    n: Annotated[int, Field(ge=1, le=MAX_IMAGES)] | None = 1
    size: str | None = "auto"
    output_format: str | None = "png"
    output_compression: Annotated[int, Field(ge=0, le=100)] | None = None
    stream: bool | None = False
    partial_images: Annotated[int, Field(ge=0, le=MAX_PARTIALS)] | None = 0
    negative_prompt: str | None = None
    steps: int | None = None
    guidance_scale: float | None = None
    seed: int | None = None

    def to_worker(self, request_id: str, time_limit: float | None) -> ImageRequest:
        """The worker's request; Unsupported names a field rbee does not serve, pydantic's ValidationError a value
        out of its bounds (a size that is no multiple of 8, a seed below 0)."""
        refuse_unserved(self.model_extra or {}, NO_OPS, NOT_YET, NEUTRAL)
        width, height = side_of(self.size)
        try:
            fmt = ImageFormat(self.output_format or "png")
        except ValueError:
            served = ", ".join(str(fmt) for fmt in ImageFormat)
            raise Unsupported(
                "output_format", f"output_format {self.output_format} is not made; ask for {served}"
            ) from None
        if self.partial_images and not self.stream:
            raise Unsupported("partial_images", "partial_images are stream events; ask with stream: true")
        if self.output_compression is not None and fmt is ImageFormat.PNG:
            raise Unsupported("output_compression", "output_compression is for jpeg and webp; png is lossless")
        return ImageRequest(
            request_id=request_id,
            prompt=self.prompt,
            negative_prompt=self.negative_prompt,
            width=width,
            height=height,
            n=self.n or 1,
            steps=self.steps,
            guidance_scale=self.guidance_scale,
            seed=self.seed,
            format=fmt,
            quality=self.output_compression,
            stream=bool(self.stream),
            events=Events.OPENAI,
            partial_images=self.partial_images or 0,
            time_limit=time_limit,
        )


def side_of(size: str | None) -> tuple[int | None, int | None]:
    """`WIDTHxHEIGHT` as two numbers (bounded by ImageRequest), or the model's own size for `auto`."""
    if size is None or size == "auto":
        return None, None
    width, sep, height = size.partition("x")
    if not sep or not width.isdigit() or not height.isdigit():
        raise Unsupported("size", f"size {size!r} is not WIDTHxHEIGHT (such as 512x512) or auto")
    return int(width), int(height)


def whole_answer(pictures: list[dict[str, Any]], fmt: ImageFormat, created: int) -> dict[str, Any]:
    """OpenAI's ImagesResponse of a worker's finished pictures."""
    first = pictures[0] if pictures else {"width": 0, "height": 0}
    return {
        "created": created,
        "data": [{"b64_json": picture["data"], "revised_prompt": None} for picture in pictures],
        "output_format": str(fmt),
        "size": f"{first['width']}x{first['height']}",
        "quality": "auto",
        "background": "opaque",
        "usage": NO_TOKENS,
    }
