"""What rbee reads of a GGUF header besides checking it: the architecture, the quantization (the stated file
type, else the type most bytes have), the number of weights and the trained context."""

from __future__ import annotations

import struct
from pathlib import Path

from rbee.hive import gguf
from tests.models import tiny_gguf


def test_a_file_without_a_stated_type_is_named_by_its_tensors(tmp_path: Path) -> None:
    path = tmp_path / "tiny.gguf"
    path.write_bytes(tiny_gguf(1000))
    header = gguf.header(path)
    assert header is not None
    assert (header.architecture, header.quantization, header.parameters, header.context_length) == (
        "llama",
        "F32",
        1000,
        None,
    )


def test_smollm2_states_its_type_and_context(smollm2: Path) -> None:
    header = gguf.header(smollm2)
    assert header is not None
    assert (header.architecture, header.quantization, header.context_length) == ("llama", "Q4_1", 8192)
    assert 130_000_000 < header.parameters < 140_000_000, header.parameters


def test_a_file_that_is_not_gguf_has_no_header(tmp_path: Path) -> None:
    path = tmp_path / "not.gguf"
    path.write_bytes(b"PK\x03\x04" + struct.pack("<I", 1) * 8)
    assert gguf.header(path) is None
