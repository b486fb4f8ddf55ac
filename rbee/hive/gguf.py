"""GGUF validation before a file may enter the catalog: magic, version, the key/value and tensor tables read
in full, and every tensor's bytes inside the file. A truncated or non-GGUF file is rejected with a reason.
"""

from __future__ import annotations

import struct
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


class GgufError(ValueError):
    """Why a file is not a usable GGUF model."""


class _Reader:
    def __init__(self, handle: BinaryIO, size: int, name: str) -> None:
        self.handle, self.size, self.name = handle, size, name

    def read(self, count: int) -> bytes:
        data = self.handle.read(count)
        if len(data) != count:
            raise GgufError(f"{self.name} ends inside its header (truncated at {self.size} bytes)")
        return data

    def unpack(self, fmt: str) -> int | float | bool:
        value: int | float | bool = struct.unpack("<" + fmt, self.read(struct.calcsize(fmt)))[0]
        return value

    def string(self) -> str:
        length = int(self.unpack("Q"))
        if length > self.size:
            raise GgufError(f"{self.name} has a corrupt string length in its header")
        return self.read(length).decode("utf-8", errors="replace")

    def skip_value(self, kind: int) -> int | None:
        """Skip one value; return it when it is an integer scalar (for general.alignment)."""
        if kind in SCALARS:
            value = self.unpack(SCALARS[kind])
            return int(value) if isinstance(value, int) else None
        if kind == STRING:
            self.string()
            return None
        if kind == ARRAY:
            item_kind, count = int(self.unpack("I")), int(self.unpack("Q"))
            if item_kind in SCALARS:
                width = struct.calcsize(SCALARS[item_kind])
                if count * width > self.size:
                    raise GgufError(f"{self.name} has a corrupt array in its header")
                self.handle.seek(count * width, 1)
            else:
                for _ in range(count):
                    self.skip_value(item_kind)
            return None
        raise GgufError(f"{self.name} has an unknown value type {kind} in its header")


def validate(path: Path) -> None:
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
        if tensor_count > 1_000_000 or kv_count > 1_000_000:
            raise GgufError(f"{path.name} has an implausible header ({tensor_count} tensors, {kv_count} keys)")
        alignment = DEFAULT_ALIGNMENT
        for _ in range(kv_count):
            key = reader.string()
            value = reader.skip_value(int(reader.unpack("I")))
            if key == "general.alignment" and value:
                alignment = value
        end = 0
        for _ in range(tensor_count):
            name = reader.string()
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
        data_start = -(-handle.tell() // alignment) * alignment
    if data_start + end > size:
        raise GgufError(f"{path.name} is truncated: its tensors need {data_start + end} bytes and the file has {size}")
