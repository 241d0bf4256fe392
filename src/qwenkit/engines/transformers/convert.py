"""GGUF -> Hugging Face checkpoint, once: the dequantized model is cached and reused.

Loading a GGUF into transformers (`from_pretrained(..., gguf_file=...)`) dequantizes every
tensor and parses the whole tokenizer in Python: minutes for a 0.5B model. So it is done once
per GGUF file and published, atomically, as a checkpoint directory in the store's cache of
converted artifacts (`qwenkit.store.converted`), `converted/<stem>-<key>/` (safetensors in
float32, which holds the dequantized values exactly, plus the tokenizer and chat template); every
later load reads that. The key is the file's verified sha256 when the store has stamped it, else
its path, size and mtime, so a changed file gets a new conversion.

The tokenizer alone is cached too (`converted/tokenizers/<key>/`): the tiny test checkpoints
reuse the real model's tokenizer without converting any weights.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

from qwenkit.errors import ModelLoadError
from qwenkit.store.converted import STAMP, content_key, converted_root, is_converted, publish
from qwenkit.store.gguf_header import read_key

log = logging.getLogger("qwenkit.transformers")

#: Bump when what `convert_gguf` writes changes (old conversions are then rebuilt, not reused).
CONVERTER_VERSION = 1

#: Conversions done by this process (tests check that a second load converts nothing).
conversions = {"model": 0, "tokenizer": 0}

# Tokens llama.cpp treats as end of generation by their text (llama-vocab.cpp), so that both
# engines stop on the same tokens of the same GGUF. Only tokens present in the file count.
_EOG_TEXTS = (
    "<|endoftext|>",
    "<|im_end|>",
    "<|eot_id|>",
    "<|eom_id|>",
    "<|end|>",
    "<end_of_turn>",
    "<|end_of_text|>",
    "<EOT>",
    "_<EOT>",
    "<｜end▁of▁sentence｜>",
    "</s>",
    "<|fim_pad|>",
    "<|repo_name|>",
    "<|file_sep|>",
)


def source_key(gguf: Path) -> str:
    """The key of this converter's conversions of `gguf` (its content and `CONVERTER_VERSION`)."""
    return content_key(gguf, version=CONVERTER_VERSION)


def converted_dir(gguf: str | os.PathLike[str]) -> Path:
    """Where `convert_gguf` puts (or has put) the checkpoint converted from `gguf`."""
    gguf = Path(gguf)
    return converted_root() / f"{gguf.stem}-{source_key(gguf)}"


def gguf_tokenizer(gguf: str | os.PathLike[str]) -> Path:
    """A directory holding the Hugging Face tokenizer (and chat template) of `gguf`, cached."""
    gguf = Path(gguf)
    out = converted_root() / "tokenizers" / f"{gguf.stem}-{source_key(gguf)}"

    def build(tmp: Path) -> None:
        from transformers import AutoTokenizer

        log.info("converting the tokenizer of %s (once)", gguf.name)
        tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        tok.save_pretrained(tmp)
        conversions["tokenizer"] += 1

    return publish(out, build, what=f"the tokenizer of {gguf.name}", source=gguf, version=CONVERTER_VERSION)


def convert_gguf(gguf: str | os.PathLike[str]) -> Path:
    """The dequantized float32 checkpoint of `gguf`, converted on first use and then reused."""
    gguf = Path(gguf)
    if not gguf.is_file():
        raise ModelLoadError(f"model file not found: {gguf}")
    out = converted_dir(gguf)
    if is_converted(out):
        return out
    tokenizer_dir = gguf_tokenizer(gguf)

    def build(tmp: Path) -> None:
        import torch
        from transformers import AutoModelForCausalLM, GgufConfig

        log.warning("converting %s to a transformers checkpoint (once; later loads reuse %s)", gguf.name, out)
        try:
            model = AutoModelForCausalLM.from_pretrained(
                str(gguf.parent),
                gguf_file=gguf.name,
                dtype=torch.float32,
                quantization_config=GgufConfig(dequantize=True),
                **_config_overrides(gguf),
            )
        except (ValueError, KeyError, RuntimeError, NotImplementedError) as exc:
            raise ModelLoadError(f"transformers cannot load {gguf.name}: {exc}") from None
        quantizer = getattr(model, "hf_quantizer", None)
        if quantizer is not None:  # the weights are plain tensors now; saving needs the config gone
            quantizer.remove_quantization_config(model)
        elif hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        for name in os.listdir(tokenizer_dir):
            if name != STAMP:
                shutil.copy2(tokenizer_dir / name, tmp / name)
        eos = _end_of_generation_ids(tmp, model.generation_config.eos_token_id)
        model.generation_config.eos_token_id = eos
        model.save_pretrained(tmp)
        conversions["model"] += 1

    return publish(out, build, what=gguf.name, source=gguf, version=CONVERTER_VERSION)


def _config_overrides(gguf: Path) -> dict[str, int]:
    """Config values transformers' GGUF reader misses: the head size of a Qwen3-style model
    (`attention.key_length`), which it otherwise takes as 128 whatever the file says."""
    try:
        arch = read_key(gguf, "general.architecture")
        head_dim = read_key(gguf, f"{arch}.attention.key_length") if isinstance(arch, str) else None
    except (OSError, ValueError):
        return {}
    return {"head_dim": int(head_dim)} if isinstance(head_dim, int) and arch in ("qwen3", "qwen3_moe") else {}


def _end_of_generation_ids(tokenizer_dir: Path, eos: int | list[int] | None) -> list[int]:
    ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
    data = json.loads((tokenizer_dir / "tokenizer.json").read_text(encoding="utf-8"))
    texts = set(_EOG_TEXTS)
    for token in data.get("added_tokens", []):
        if token.get("content") in texts:
            ids.add(int(token["id"]))
    vocab = data.get("model", {}).get("vocab", {})
    if isinstance(vocab, dict):
        for text in texts:
            if text in vocab:
                ids.add(int(vocab[text]))
    return sorted(ids)
