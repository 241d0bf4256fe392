"""Tiny random-weight Qwen2 / Qwen3 Hugging Face checkpoints with the real Qwen tokenizer.

The counterpart of `tiny.py` for the transformers engine: a `Qwen2Config` / `Qwen3Config` of a
few layers of width 64, weights drawn from a seeded generator, saved with `save_pretrained`
(safetensors), plus the tokenizer of a real Qwen2.5 GGUF (converted once by
`qwenkit.engines.transformers.gguf_tokenizer` and cached) and a generation config whose
end-of-generation ids are `<|im_end|>` and `<|endoftext|>`, as in Qwen's releases.

For ``arch="qwen3"`` the ids 151665..151668 are renamed to ``<tool_response>``,
``</tool_response>``, ``<think>``, ``</think>`` (in the vocabulary and as non-special added
tokens, so they stay single tokens with special-token parsing off, as in real Qwen3) and the
official Qwen3 chat template is installed. For ``arch="qwen2"`` the source's template is kept.

``tiny_hf(arch, cache_dir, *, source_gguf=None, **params) -> Path`` builds once per
(arch, params, source, builder) into ``cache_dir`` and reuses it (file lock, atomic rename).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

from qwenkit.testing.build_cache import build_once, build_params, source_digest
from qwenkit.testing.tiny import ARCHS, QWEN3_RENAMED_TOKENS, default_source_gguf, official_template

__all__ = ["BUILDER_VERSION", "build_tiny_hf", "tiny_hf"]

BUILDER_VERSION = 1
EOS_IDS = [151645, 151643]  # <|im_end|>, <|endoftext|>


def build_tiny_hf(
    path: os.PathLike[str] | str,
    *,
    arch: str,
    source_gguf: os.PathLike[str] | str,
    n_layer: int = 2,
    n_embd: int = 64,
    n_head: int = 4,
    n_head_kv: int = 2,
    n_ff: int = 128,
    head_dim: int | None = None,
    n_ctx_train: int = 4096,
    seed: int = 0,
    tie_embeddings: bool = False,
    chat_template: str | None = None,
) -> Path:
    """Write a tiny random ``arch`` checkpoint directory to ``path`` (which must not exist)."""
    # torch and the transformers engine are an optional extra: imported when a checkpoint is built
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM, Qwen3Config, Qwen3ForCausalLM

    from qwenkit.engines.transformers.convert import gguf_tokenizer

    if arch not in ARCHS:
        raise ValueError(f"arch must be one of {ARCHS}, not {arch!r}")
    path = Path(path)
    path.mkdir(parents=True)
    tokenizer_dir = gguf_tokenizer(source_gguf)
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        if (tokenizer_dir / name).is_file():
            shutil.copy2(tokenizer_dir / name, path / name)
    if arch == "qwen3":
        _rename_qwen3_tokens(path / "tokenizer.json")
        chat_template = chat_template if chat_template is not None else official_template("qwen3")
    if chat_template is not None:
        (path / "chat_template.jinja").write_text(chat_template, encoding="utf-8")

    common = text_config(
        n_layer=n_layer, n_embd=n_embd, n_head=n_head, n_head_kv=n_head_kv, n_ff=n_ff, n_ctx_train=n_ctx_train
    )
    common.update(rope_theta=1_000_000.0, tie_word_embeddings=tie_embeddings)
    if arch == "qwen3":
        config = Qwen3Config(**common, head_dim=head_dim or n_embd // n_head)
        cls = Qwen3ForCausalLM
    else:
        config = Qwen2Config(**common)
        cls = Qwen2ForCausalLM
    torch.manual_seed(seed)
    model = cls(config)
    save_checkpoint(model, path)
    return path


def text_config(
    *, n_layer: int, n_embd: int, n_head: int, n_head_kv: int, n_ff: int, n_ctx_train: int
) -> dict[str, Any]:
    """The text model's config fields every tiny checkpoint shares (Qwen's vocabulary and special ids)."""
    return dict(
        vocab_size=151936,
        hidden_size=n_embd,
        intermediate_size=n_ff,
        num_hidden_layers=n_layer,
        num_attention_heads=n_head,
        num_key_value_heads=n_head_kv,
        max_position_embeddings=n_ctx_train,
        rms_norm_eps=1e-6,
        bos_token_id=151643,
        eos_token_id=151645,
        pad_token_id=151643,
    )


def save_checkpoint(model: Any, path: Path) -> None:
    """Save a tiny model with Qwen's generation config (end ids `<|im_end|>`, `<|endoftext|>`)."""
    model.generation_config.eos_token_id = list(EOS_IDS)
    model.generation_config.pad_token_id = 151643
    model.save_pretrained(path)


def _rename_qwen3_tokens(tokenizer_json: Path) -> None:
    data = json.loads(tokenizer_json.read_text(encoding="utf-8"))
    vocab = data["model"]["vocab"]
    by_id = {i: t for t, i in vocab.items()}
    for token_id, text in QWEN3_RENAMED_TOKENS.items():
        old = by_id.get(token_id)
        if old is not None and old != text:
            del vocab[old]
        vocab[text] = token_id
    added = [t for t in data["added_tokens"] if t["id"] not in QWEN3_RENAMED_TOKENS]
    for token_id, text in QWEN3_RENAMED_TOKENS.items():
        added.append(
            {
                "id": token_id,
                "content": text,
                "single_word": False,
                "lstrip": False,
                "rstrip": False,
                "normalized": False,
                "special": False,
            }
        )
    data["added_tokens"] = sorted(added, key=lambda t: t["id"])
    tokenizer_json.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")


def tiny_hf(
    arch: str,
    cache_dir: os.PathLike[str] | str,
    *,
    source_gguf: os.PathLike[str] | str | None = None,
    **params: Any,
) -> Path:
    """A tiny ``arch`` checkpoint directory in ``cache_dir``, built on first use, then reused."""
    from qwenkit.engines.transformers.convert import source_key  # needs torch, as the checkpoint does

    merged = build_params(build_tiny_hf, params, fixed=("arch", "source_gguf"))
    source = Path(source_gguf) if source_gguf is not None else default_source_gguf()
    template = merged.pop("chat_template")
    blob = json.dumps(
        {
            "builder": BUILDER_VERSION,
            "module": source_digest(Path(__file__)),
            "arch": arch,
            "params": merged,
            "template": None if template is None else hashlib.sha256(template.encode()).hexdigest(),
            "source": source_key(source),
        },
        sort_keys=True,
    )
    key = hashlib.sha256(blob.encode()).hexdigest()[:20]
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    out = cache_dir / f"tiny-hf-{arch}-{key}"
    build_once(
        out, out / "model.safetensors", lambda tmp: build_tiny_hf(tmp / "m", arch=arch, source_gguf=source, **params)
    )
    return out
