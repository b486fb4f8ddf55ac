"""A crafted GGUF header costs the hive neither memory nor a catalog entry: lengths are checked before use, value
bodies are skipped by seeking, and a file that is not a model (no tensors, no architecture) is refused."""

from __future__ import annotations

import struct
import tracemalloc
from pathlib import Path

import pytest

from rbee.hive import gguf
from tests.models import tiny_gguf


def _string(text: str) -> bytes:
    data = text.encode()
    return struct.pack("<Q", len(data)) + data


def _header(tensors: int, keys: list[bytes]) -> bytes:
    return b"GGUF" + struct.pack("<IQQ", 3, tensors, len(keys)) + b"".join(keys)


ARCH = _string("general.architecture") + struct.pack("<I", 8) + _string("llama")
TENSOR = _string("weight") + struct.pack("<I", 1) + struct.pack("<Q", 4) + struct.pack("<IQ", 0, 0)


def _write(path: Path, data: bytes, size: int | None = None) -> Path:
    path.write_bytes(data)
    if size:
        with path.open("r+b") as handle:
            handle.truncate(size)  # sparse: the declared bytes exist but take no disk
    return path


def _refusal(path: Path) -> str:
    with pytest.raises(gguf.GgufError) as refused:
        gguf.validate(path)
    return str(refused.value)


def test_a_tiny_model_passes(tmp_path: Path) -> None:
    gguf.validate(_write(tmp_path / "ok.gguf", tiny_gguf()))


def test_a_huge_string_value_is_skipped_not_read(tmp_path: Path) -> None:
    """A 200 MiB string value in a sparse file: a reader that reads it allocates it; this one seeks over it."""
    declared = 200 << 20
    key = _string("tokenizer.chat_template") + struct.pack("<I", 8) + struct.pack("<Q", declared)
    path = _write(tmp_path / "big.gguf", _header(1, [ARCH, key]), size=None)
    with path.open("r+b") as handle:
        handle.seek(0, 2)
        handle.seek(declared, 1)
        handle.write(TENSOR + b"\0" * 64)
    tracemalloc.start()
    try:
        gguf.validate(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 8 << 20, f"validating peaked at {peak >> 20} MiB"


def test_a_header_past_the_cap_is_refused(tmp_path: Path) -> None:
    key = _string("tokenizer.chat_template") + struct.pack("<I", 8) + struct.pack("<Q", 300 << 20)
    path = _write(tmp_path / "huge.gguf", _header(1, [ARCH, key]), size=400 << 20)
    assert "header larger than 256 MiB" in _refusal(path)


def test_a_key_longer_than_the_cap_is_refused(tmp_path: Path) -> None:
    key = struct.pack("<Q", 200 << 20)
    path = _write(tmp_path / "key.gguf", _header(1, [key]), size=300 << 20)
    assert "key of 209715200 bytes" in _refusal(path)


def test_an_array_with_a_huge_count_is_refused(tmp_path: Path) -> None:
    array = _string("tokenizer.ggml.tokens") + struct.pack("<I", 9) + struct.pack("<IQ", 8, 1 << 40)
    assert "an array of" in _refusal(_write(tmp_path / "arr.gguf", _header(1, [ARCH, array]), size=1 << 20))


def test_nested_arrays_are_refused(tmp_path: Path) -> None:
    array = _string("x") + struct.pack("<I", 9) + struct.pack("<IQ", 9, 1) + struct.pack("<IQ", 9, 1)
    assert "nests arrays" in _refusal(_write(tmp_path / "nest.gguf", _header(1, [ARCH, array]), size=1 << 20))


def test_zero_tensors_is_not_a_model(tmp_path: Path) -> None:
    assert "0 tensors" in _refusal(_write(tmp_path / "empty.gguf", _header(0, [ARCH])))


def test_no_architecture_is_not_a_model(tmp_path: Path) -> None:
    assert "names no model architecture" in _refusal(_write(tmp_path / "noarch.gguf", _header(1, []) + TENSOR))


def test_a_zero_alignment_is_refused(tmp_path: Path) -> None:
    align = _string("general.alignment") + struct.pack("<I", 4) + struct.pack("<I", 0)
    assert "power of two" in _refusal(_write(tmp_path / "align.gguf", _header(1, [ARCH, align]) + TENSOR))


def test_a_truncated_file_is_refused(tmp_path: Path) -> None:
    assert "truncated" in _refusal(_write(tmp_path / "cut.gguf", tiny_gguf(1024)[:-100]))
