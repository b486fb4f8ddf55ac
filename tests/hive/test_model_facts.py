"""What a model's files say about it, for the catalog and the preflight: a folder's config.json read as JSON (the
KV cache a torch worker holds per token, in float32; the context it was trained for), a gguf's header."""

from __future__ import annotations

import json
from pathlib import Path

from rbee.hive import gguf, hf_config, model_facts
from rbee.hive.catalog import ModelRecord


def test_smollm2_costs_a_torch_worker_twice_what_it_costs_llama_cpp_per_token(
    smollm2: Path, smollm2_folder: Path
) -> None:
    """The same model, as a folder and as a gguf: float32 keys and values against llama.cpp's f16 ones."""
    facts = hf_config.facts(smollm2_folder)
    assert facts is not None
    assert facts.architecture == "llama" and facts.context_length == 8192
    assert facts.kv_bytes_per_token == 30 * 3 * 64 * 2 * 4
    assert facts.kv_bytes_per_token == 2 * gguf.kv_bytes_per_token(smollm2)  # type: ignore[operator]
    record = ModelRecord("smol", "hf://x/smol", "safetensors", "text", str(smollm2_folder), 1, None, True, True)
    entry = model_facts.entry(record)
    assert (entry.kv_bytes_per_token, entry.context_length, entry.architecture) == (46080, 8192, "llama")
    assert model_facts.kv_facts(smollm2_folder, "torch") == (46080, 8192)
    assert model_facts.kv_facts(smollm2, "gguf") == (23040, None)


def test_configs_that_say_less_or_nest_their_numbers(tmp_path: Path) -> None:
    def config(**numbers: object) -> Path:
        folder = tmp_path / str(len(list(tmp_path.iterdir())))
        folder.mkdir()
        (folder / "config.json").write_text(json.dumps(numbers))
        return folder

    no_groups = hf_config.facts(config(num_hidden_layers=2, num_attention_heads=4, hidden_size=64))
    assert no_groups is not None and no_groups.kv_bytes_per_token == 2 * 4 * 16 * 2 * 4  # every head keeps its own
    nested = hf_config.facts(
        config(
            model_type="llava",
            text_config={"num_hidden_layers": 2, "num_attention_heads": 8, "num_key_value_heads": 2},
            hidden_size=512,
            head_dim=128,
            max_position_embeddings=4096,
        )
    )
    assert nested is not None and nested.kv_bytes_per_token == 2 * 2 * 128 * 2 * 4 and nested.context_length == 4096
    vague = hf_config.facts(config(model_type="bert", num_hidden_layers=True, hidden_size="64"))
    assert vague is not None and vague.kv_bytes_per_token is None and vague.context_length is None
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text("{not json")
    assert hf_config.facts(broken) is None
    assert hf_config.facts(tmp_path / "missing") is None
