"""Pictures and eyes for tests, made offline: PNG files written by hand, and a tiny multimodal projector
(a llava-style CLIP vision tower with random weights, as a GGUF that llama.cpp's mtmd loads) for a text model
of a given width. The projector sees nothing meaningful; what tests check is that each image is read, turned
into its positions in the prompt and evaluated, through the real engine."""

from __future__ import annotations

import base64
import struct
import zlib
from pathlib import Path

PROJECTOR_IMAGE = 64
PROJECTOR_PATCH = 16
IMAGE_POSITIONS = (PROJECTOR_IMAGE // PROJECTOR_PATCH) ** 2
"""What one image takes of a prompt with the tiny projector: a position per patch."""


def png(width: int, height: int, rgb: tuple[int, int, int]) -> bytes:
    """A PNG of one colour."""
    rows = b"".join(b"\0" + bytes(rgb) * width for _ in range(height))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


def data_url(picture: bytes, media_type: str = "image/png") -> str:
    return f"data:{media_type};base64,{base64.b64encode(picture).decode()}"


def make_tiny_projector(target: Path, text_width: int = 576) -> Path:
    """A multimodal projector for a text model whose embeddings are `text_width` wide (SmolLM2-135M: 576)."""
    if target.is_file():
        return target
    import gguf
    import numpy as np

    width, feed_forward, blocks = 32, 64, 1
    writer = gguf.GGUFWriter(str(target), "clip")
    writer.add_bool("clip.has_vision_encoder", True)
    writer.add_string("clip.projector_type", "mlp")
    for key, value in (
        ("image_size", PROJECTOR_IMAGE),
        ("patch_size", PROJECTOR_PATCH),
        ("embedding_length", width),
        ("feed_forward_length", feed_forward),
        ("projection_dim", text_width),
        ("block_count", blocks),
        ("attention.head_count", 2),
    ):
        writer.add_uint32(f"clip.vision.{key}", value)
    writer.add_float32("clip.vision.attention.layer_norm_epsilon", 1e-5)
    writer.add_array("clip.vision.image_mean", [0.5, 0.5, 0.5])
    writer.add_array("clip.vision.image_std", [0.5, 0.5, 0.5])
    writer.add_bool("clip.use_gelu", True)
    random = np.random.default_rng(0)

    def tensor(name: str, *shape: int) -> None:
        writer.add_tensor(name, (random.standard_normal(shape) * 0.02).astype(np.float32))

    tensor("v.class_embd", width)
    tensor("v.patch_embd.weight", width, 3, PROJECTOR_PATCH, PROJECTOR_PATCH)
    tensor("v.position_embd.weight", IMAGE_POSITIONS + 1, width)
    for norm in ("v.pre_ln", *(f"v.blk.{b}.ln{n}" for b in range(blocks) for n in (1, 2))):
        tensor(f"{norm}.weight", width)
        tensor(f"{norm}.bias", width)
    for block in range(blocks):
        for name in ("attn_q", "attn_k", "attn_v", "attn_out"):
            tensor(f"v.blk.{block}.{name}.weight", width, width)
            tensor(f"v.blk.{block}.{name}.bias", width)
        tensor(f"v.blk.{block}.ffn_up.weight", feed_forward, width)
        tensor(f"v.blk.{block}.ffn_up.bias", feed_forward)
        tensor(f"v.blk.{block}.ffn_down.weight", width, feed_forward)
        tensor(f"v.blk.{block}.ffn_down.bias", width)
    tensor("mm.0.weight", text_width, width)
    tensor("mm.0.bias", text_width)
    tensor("mm.2.weight", text_width, text_width)
    tensor("mm.2.bias", text_width)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return target
