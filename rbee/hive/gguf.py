"""GGUF validation before a file may enter the catalog: magic, version, the key/value and tensor tables read
in full, and every tensor's bytes inside the file. A truncated or non-GGUF file is rejected with a reason.
"""

from __future__ import annotations

import functools
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

MAGIC = b"GGUF"
DEFAULT_ALIGNMENT = 32

# ggml type id -> (elements per block, bytes per block)
TYPE_SIZES: dict[int, tuple[int, int]] = {
    0: (1, 4),
    1: (1, 2),
    2: (32, 18),
    3: (32, 20),
    6: (32, 22),
    7: (32, 24),
    8: (32, 34),
    9: (32, 36),
    10: (256, 84),
    11: (256, 110),
    12: (256, 144),
    13: (256, 176),
    14: (256, 210),
    15: (256, 292),
    16: (256, 66),
    17: (256, 74),
    18: (256, 98),
    19: (256, 50),
    20: (32, 18),
    21: (256, 110),
    22: (256, 82),
    23: (256, 136),
    24: (1, 1),
    25: (1, 2),
    26: (1, 4),
    27: (1, 8),
    28: (1, 8),
    29: (256, 56),
    30: (1, 2),
    34: (256, 54),
    35: (256, 66),
    39: (32, 17),
}
# gguf value type id -> struct format of a scalar
SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
STRING, ARRAY = 8, 9


MAX_KEY_BYTES = 1024
MAX_NAME_BYTES = 1024
MAX_ARRAY_ITEMS = 8 << 20  # a large tokenizer has ~250k tokens and ~500k merges
MAX_HEADER_BYTES = 256 << 20
MAX_TENSORS = 1 << 20
MAX_KEYS = 1 << 16
ARCHITECTURE_KEY = "general.architecture"


class GgufError(ValueError):
    """Why a file is not a usable GGUF model."""


class _Reader:
    """Reads a GGUF header within fixed bounds: every length it is told is checked before it is used, and value
    bodies are skipped by seeking, so a crafted header costs neither memory nor time beyond its caps."""

    def __init__(self, handle: BinaryIO, size: int, name: str) -> None:
        self.handle, self.size, self.name = handle, size, name

    def read(self, count: int) -> bytes:
        data = self.handle.read(count)
        if len(data) != count:
            raise GgufError(f"{self.name} ends inside its header (truncated at {self.size} bytes)")
        return data

    def skip(self, count: int) -> None:
        position = self.handle.tell() + count
        if position > min(self.size, MAX_HEADER_BYTES):
            if position > self.size:
                raise GgufError(f"{self.name} ends inside its header (truncated at {self.size} bytes)")
            raise GgufError(f"{self.name} has a header larger than {MAX_HEADER_BYTES >> 20} MiB")
        self.handle.seek(position)

    def unpack(self, fmt: str) -> int | float | bool:
        value: int | float | bool = struct.unpack("<" + fmt, self.read(struct.calcsize(fmt)))[0]
        return value

    def string(self, limit: int, what: str) -> str:
        """A short string that rbee reads (a key, a tensor name): at most `limit` bytes."""
        length = int(self.unpack("Q"))
        if length > limit:
            raise GgufError(f"{self.name} has a {what} of {length} bytes in its header (at most {limit})")
        return self.read(length).decode("utf-8", errors="replace")

    def skip_value(self, kind: int, depth: int = 0) -> None:
        if kind in SCALARS:
            self.skip(struct.calcsize(SCALARS[kind]))
        elif kind == STRING:
            self.skip(int(self.unpack("Q")))
        elif kind == ARRAY and depth == 0:
            item_kind, count = int(self.unpack("I")), int(self.unpack("Q"))
            if count > MAX_ARRAY_ITEMS:
                raise GgufError(f"{self.name} has an array of {count} values in its header (at most {MAX_ARRAY_ITEMS})")
            if item_kind in SCALARS:
                self.skip(count * struct.calcsize(SCALARS[item_kind]))
            else:
                for _ in range(count):
                    self.skip_value(item_kind, depth + 1)
        elif kind == ARRAY:
            raise GgufError(f"{self.name} nests arrays inside arrays in its header")
        else:
            raise GgufError(f"{self.name} has an unknown value type {kind} in its header")


FILE_TYPES = {
    0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 7: "Q8_0", 8: "Q5_0", 9: "Q5_1", 10: "Q2_K", 11: "Q3_K_S",
    12: "Q3_K_M", 13: "Q3_K_L", 14: "Q4_K_S", 15: "Q4_K_M", 16: "Q5_K_S", 17: "Q5_K_M", 18: "Q6_K",
    19: "IQ2_XXS", 20: "IQ2_XS", 21: "Q2_K_S", 22: "IQ3_XS", 23: "IQ3_XXS", 24: "IQ1_S", 25: "IQ4_NL",
    26: "IQ3_S", 27: "IQ3_M", 28: "IQ2_S", 29: "IQ2_M", 30: "IQ4_XS", 31: "IQ1_M", 32: "BF16",
}  # fmt: skip
"""llama.cpp's `general.file_type` (llama_ftype): how the file's weights are quantized, as people name it."""
TENSOR_TYPES = {
    0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 6: "Q5_0", 7: "Q5_1", 8: "Q8_0", 10: "Q2_K", 11: "Q3_K", 12: "Q4_K",
    13: "Q5_K", 14: "Q6_K", 30: "BF16",
}  # fmt: skip
"""ggml tensor types, for a file that states no file_type: it is named by the type most of its bytes have."""

KV_KEYS = (
    "block_count",
    "embedding_length",
    "attention.head_count",
    "attention.head_count_kv",
    "attention.key_length",
    "attention.value_length",
)
"""The architecture's numbers (`{architecture}.{key}`) that size its KV cache."""
INTEGERS = {4: "I", 5: "i", 10: "Q", 11: "q"}


@dataclass(frozen=True, slots=True)
class Header:
    architecture: str
    numbers: dict[str, int]
    """The KV_KEYS (and context_length) the file states as single integers, without the architecture's prefix."""
    parameters: int = 0
    """Weights in all its tensors."""
    quantization: str | None = None
    """`Q4_K_M`, `Q8_0`, `F16` ...: the file's stated type, else the type most of its bytes have."""

    @property
    def context_length(self) -> int | None:
        """The context the model was trained for."""
        return self.numbers.get("context_length")

    def kv_bytes_per_token(self) -> int | None:
        """What one token of context costs in llama.cpp's default f16 cache (keys and values of every layer);
        None when the header does not say enough to tell."""
        numbers = self.numbers
        layers, heads = numbers.get("block_count"), numbers.get("attention.head_count")
        embedding = numbers.get("embedding_length")
        if not layers or not heads or not embedding:
            return None
        kv_heads = numbers.get("attention.head_count_kv", heads)
        key = numbers.get("attention.key_length", embedding // heads)
        value = numbers.get("attention.value_length", embedding // heads)
        return layers * kv_heads * (key + value) * 2


def validate(path: Path) -> Header:
    size = path.stat().st_size
    with path.open("rb") as handle:
        reader = _Reader(handle, size, path.name)
        head = handle.read(4)
        if head != MAGIC:
            raise GgufError(f"{path.name} is not a GGUF file (it does not start with the GGUF magic)")
        version = int(reader.unpack("I"))
        if version not in (2, 3):
            raise GgufError(f"{path.name} is GGUF version {version}; rbee reads versions 2 and 3")
        tensor_count, kv_count = int(reader.unpack("Q")), int(reader.unpack("Q"))
        if not 0 < tensor_count <= MAX_TENSORS or kv_count > MAX_KEYS:
            raise GgufError(f"{path.name} has an implausible header ({tensor_count} tensors, {kv_count} keys)")
        alignment, architecture, file_type = DEFAULT_ALIGNMENT, None, None
        stated: dict[str, int] = {}
        for _ in range(kv_count):
            key = reader.string(MAX_KEY_BYTES, "key")
            kind = int(reader.unpack("I"))
            if key.partition(".")[2] in (*KV_KEYS, "context_length") and kind in INTEGERS:
                stated[key] = int(reader.unpack(INTEGERS[kind]))
            elif key == "general.file_type" and kind in INTEGERS:
                file_type = int(reader.unpack(INTEGERS[kind]))
            elif key == "general.alignment" and kind == 4:  # uint32
                alignment = int(reader.unpack("I"))
                if alignment <= 0 or alignment & (alignment - 1) or alignment > 1 << 20:
                    raise GgufError(f"{path.name} declares an alignment of {alignment}; it must be a power of two")
            elif key == ARCHITECTURE_KEY and kind == STRING:
                architecture = reader.string(MAX_NAME_BYTES, "architecture name")
            else:
                reader.skip_value(kind)
        if not architecture:
            raise GgufError(f"{path.name} names no model architecture ({ARCHITECTURE_KEY}); it is not a model file")
        end, parameters = 0, 0
        bytes_by_type: dict[int, int] = {}
        for _ in range(tensor_count):
            name = reader.string(MAX_NAME_BYTES, "tensor name")
            dims = int(reader.unpack("I"))
            if dims > 8:
                raise GgufError(f"{path.name}: tensor {name} has {dims} dimensions")
            elements = 1
            for _ in range(dims):
                elements *= int(reader.unpack("Q"))
            kind, offset = int(reader.unpack("I")), int(reader.unpack("Q"))
            block = TYPE_SIZES.get(kind)
            nbytes = (elements // block[0]) * block[1] if block else 0
            end = max(end, offset + nbytes)
            parameters += elements
            bytes_by_type[kind] = bytes_by_type.get(kind, 0) + nbytes
        data_start = -(-handle.tell() // alignment) * alignment
    if data_start + end > size:
        raise GgufError(f"{path.name} is truncated: its tensors need {data_start + end} bytes and the file has {size}")
    names = (*KV_KEYS, "context_length")
    most = max(bytes_by_type, key=bytes_by_type.__getitem__) if bytes_by_type else None
    quantization = FILE_TYPES.get(file_type) if file_type is not None else None
    return Header(
        architecture,
        {key: stated[f"{architecture}.{key}"] for key in names if f"{architecture}.{key}" in stated},
        parameters,
        quantization or (TENSOR_TYPES.get(most) if most is not None else None),
    )


def header(path: Path) -> Header | None:
    """The header of the GGUF at `path`, or None when it is not a readable GGUF. Read once per version of the file
    (GET /v1/state asks on every poll, each worker start asks again)."""
    try:
        stat = path.stat()
    except OSError:
        return None
    return _header(str(path), stat.st_size, stat.st_mtime_ns)


def kv_bytes_per_token(path: Path) -> int | None:
    """What one token of context costs in the KV cache of the GGUF at `path`; None when its header does not tell."""
    found = header(path)
    return found.kv_bytes_per_token() if found is not None else None


@functools.lru_cache(maxsize=256)
def _header(path: str, size: int, mtime_ns: int) -> Header | None:
    try:
        return validate(Path(path))
    except (OSError, GgufError):
        return None
