"""A gguf model's eyes: a multimodal projector (hive.yaml's `mmproj`) through llama.cpp's mtmd library.

A chat whose messages hold images is rendered by the model's template with a marker where each image stands;
the marker is this worker's own random string, so no text a client sends can pose as an image. The rendered
prompt is cut at the markers into text and image parts and tokenized by mtmd, which turns each image into a
run of embedding positions. In the batch loop an image stands in a sequence's token list as that many copies
of one placeholder (negative, from the image's hash), so the prefix cache matches a repeated image like
repeated text, and is evaluated into the sequence's cache by mtmd when the sequence reaches it.
"""

from __future__ import annotations

import base64
import ctypes
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from rbee.api.wire import ChatMessage
from rbee.worker.backends import BackendError, ImageRefused


@dataclass(frozen=True, slots=True)
class Image:
    """One image of a prompt, tokenized: the mtmd chunk to evaluate and how many positions it takes."""

    chunk: Any
    positions: int


@dataclass(eq=False)
class Tokenized:
    """A prompt as the batch loop takes it: token ids (an image's positions as its placeholder) and, by the index
    where each starts, the images. It owns the mtmd memory its images live in until `close`."""

    tokens: list[int]
    images: dict[int, Image] = field(default_factory=dict)
    _owned: list[Any] = field(default_factory=list)
    _free: Any = None

    def image_at(self, index: int) -> tuple[int, Image] | None:
        """The image whose positions hold `index`, with where it starts; None when `index` is a text token."""
        for start, image in self.images.items():
            if start <= index < start + image.positions:
                return start, image
        return None

    def close(self) -> None:
        if self._free is not None:
            for handle in self._owned:
                self._free(handle)
            self._owned.clear()


class Projector:
    """The mtmd context of one model and its projector file."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.marker = f"<rbee-image-{secrets.token_hex(8)}>"
        """Where an image stands in a rendered chat; random per worker, so clients cannot write one."""
        self._mtmd: Any = None
        self._ctx: Any = None

    def load(self, model: Any, threads: int, use_gpu: bool) -> None:
        from llama_cpp import _logger
        from llama_cpp import mtmd_cpp as mtmd

        mtmd.mtmd_log_set(_logger.llama_log_callback, ctypes.c_void_p(0))  # errors only, as llama.cpp's own
        mtmd.mtmd_helper_log_set(_logger.llama_log_callback, ctypes.c_void_p(0))
        params = mtmd.mtmd_context_params_default()
        params.use_gpu, params.n_threads, params.print_timings = use_gpu, threads, False
        self._ctx = mtmd.mtmd_init_from_file(self.path.encode(), model, params)
        if not self._ctx:
            raise BackendError(f"llama.cpp could not load the multimodal projector {self.path}")
        if not mtmd.mtmd_support_vision(self._ctx):
            mtmd.mtmd_free(self._ctx)
            self._ctx = None
            raise BackendError(f"the multimodal projector {self.path} has no vision encoder")
        self._mtmd = mtmd

    def render(self, messages: Sequence[ChatMessage]) -> tuple[list[dict[str, Any]], list[bytes]]:
        """The messages as the chat template takes them, a marker where each image stands, and the images'
        bytes in the order their markers come."""
        rendered, images = [], []
        for message in messages:
            dumped = message.model_dump(exclude_none=True)
            pictures = dumped.pop("images", None) or []
            text = str(dumped.get("content") or "")
            pieces, last = [], 0
            for picture in sorted(pictures, key=lambda item: item["at"]):
                at = min(max(int(picture["at"]), last), len(text))
                pieces += [text[last:at], self.marker]
                last = at
                images.append(base64.b64decode(picture["data"]))
            if pictures:
                dumped["content"] = "".join([*pieces, text[last:]])
            rendered.append(dumped)
        return rendered, images

    def tokenize(self, prompt: str, images: Sequence[bytes], bos: bool) -> Tokenized:
        """The prompt cut at its markers, with `images` in their places, as mtmd tokenizes it."""
        mtmd = self._mtmd
        texts = prompt.split(self.marker)
        if len(texts) != len(images) + 1:
            raise BackendError(f"the prompt holds {len(texts) - 1} image markers for {len(images)} images")
        made = Tokenized([], _free=None)
        bitmaps, keep = [], []
        try:
            for number, data in enumerate(images):
                buffer = (ctypes.c_uint8 * len(data)).from_buffer_copy(data)
                bitmap = mtmd.mtmd_helper_bitmap_init_from_buf(self._ctx, buffer, len(data), False)
                if not bitmap:
                    raise ImageRefused(f"image {number + 1} of the request is not a PNG, JPEG, GIF or BMP image")
                bitmaps.append(bitmap)
            parts = []
            for number, text in enumerate(texts):
                if text:
                    encoded = text.encode("utf-8")
                    piece = mtmd.mtmd_input_text(encoded, len(encoded), False, True)
                    keep += [encoded, piece]
                    parts.append(mtmd.mtmd_input_part(ctypes.pointer(piece), None))
                if number < len(bitmaps):
                    parts.append(mtmd.mtmd_input_part(None, bitmaps[number]))
            pointers = (ctypes.POINTER(mtmd.mtmd_input_part) * len(parts))(*[ctypes.pointer(p) for p in parts])
            chunks = mtmd.mtmd_input_chunks_init()
            if mtmd.mtmd_tokenize_from_parts(self._ctx, chunks, pointers, len(parts), bos) != 0:
                mtmd.mtmd_input_chunks_free(chunks)
                raise ImageRefused("the projector could not take the request's images")
        finally:
            for bitmap in bitmaps:
                mtmd.mtmd_bitmap_free(bitmap)
        made._owned.append(chunks)
        made._free = mtmd.mtmd_input_chunks_free
        for index in range(mtmd.mtmd_input_chunks_size(chunks)):
            chunk = mtmd.mtmd_input_chunks_get(chunks, index)
            if mtmd.mtmd_input_chunk_get_type(chunk) == mtmd.MTMD_INPUT_CHUNK_TYPE_TEXT:
                count = ctypes.c_size_t(0)
                tokens = mtmd.mtmd_input_chunk_get_tokens_text(chunk, ctypes.byref(count))
                made.tokens += [tokens[i] for i in range(count.value)]
                continue
            positions = int(mtmd.mtmd_input_chunk_get_n_pos(chunk))
            identity = mtmd.mtmd_input_chunk_get_id(chunk) or secrets.token_hex(8).encode()
            made.images[len(made.tokens)] = Image(chunk, positions)
            made.tokens += [-1 - int(identity[:15], 16)] * positions
        return made

    def evaluate(self, context: Any, image: Image, position: int, sequence: int, batch: int) -> None:
        """Put the image's embeddings in `sequence` of the cache at `position` (mtmd encodes and decodes it)."""
        import llama_cpp

        reached = llama_cpp.llama_pos(0)
        failed = self._mtmd.mtmd_helper_eval_chunk_single(
            self._ctx, context, image.chunk, position, sequence, batch, False, ctypes.byref(reached)
        )
        if failed:
            raise BackendError(f"llama.cpp could not evaluate an image (mtmd error {failed})")

    def close(self) -> None:
        if self._ctx is not None and self._mtmd is not None:
            self._mtmd.mtmd_free(self._ctx)
        self._ctx = None
