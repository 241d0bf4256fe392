"""Tiny random-weight hybrid-attention test models: Qwen3.5 dense, Qwen3.5-MoE and Qwen3-Next.

``build_tiny_hybrid(path, *, arch, source_gguf, ...)`` writes a transformers checkpoint from the
model's own config class (``Qwen3_5TextConfig`` + ``Qwen3_5ForCausalLM``, ``Qwen3_5MoeTextConfig``
+ ``Qwen3_5MoeForCausalLM``, ``Qwen3NextConfig`` + ``Qwen3NextForCausalLM``): four layers of width
64, three gated-DeltaNet (``linear_attention``) layers and every fourth ``full_attention``, as
the released models are laid out, with seeded random weights. Like the released checkpoints it
carries one multi-token-prediction layer under ``mtp.*`` (``mtp.fc``, ``mtp.pre_fc_norm_embedding``,
``mtp.pre_fc_norm_hidden``, ``mtp.norm``, ``mtp.layers.0.*``: a full-attention decoder layer),
which transformers ignores on load and llama.cpp's converter turns into a nextn block.

The tokenizer is the one qwenkit's tiny Qwen3 models use (the real 151,936-token Qwen2.5/Qwen3
vocabulary from a Qwen2.5 GGUF, with ``<think>``/``</think>`` and the tool-response tokens at
Qwen3's ids): the real Qwen3.5 tokenizer (248,320 tokens) is not reachable offline. Qwen3.5
models get the official Qwen3.5 chat template of the vendored llama.cpp
(``models/templates/Qwen3.5-4B.jinja``: thinking opened by the prompt); Qwen3-Next gets the
official Qwen3 template (the vendored sources ship no Qwen3-Next template).

``tiny_hybrid(arch, cache_dir, ...) -> Path`` builds a checkpoint once and reuses it;
``tiny_hybrid_gguf(arch, cache_dir, *, outtype="f32", ...) -> Path`` converts it with the vendored
``convert_hf_to_gguf.py`` (``f32`` or ``q8_0``), also once. Both are safe under concurrent test
processes (file lock + atomic rename).
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from qwenkit.testing import tiny_hf
from qwenkit.testing.build_cache import build_once, build_params, source_digest
from qwenkit.testing.tiny import default_source_gguf, official_template

__all__ = ["HYBRID_ARCHS", "build_tiny_hybrid", "tiny_hybrid", "tiny_hybrid_gguf"]

BUILDER_VERSION = 1
#: qwenkit's names for the tiny hybrid models: llama.cpp's architecture names.
HYBRID_ARCHS: tuple[str, ...] = ("qwen35", "qwen35moe", "qwen3next")
OUTTYPES = ("f32", "q8_0")


def build_tiny_hybrid(
    path: os.PathLike[str] | str,
    *,
    arch: str,
    source_gguf: os.PathLike[str] | str,
    n_layer: int = 4,
    n_embd: int = 64,
    n_head: int = 4,
    n_head_kv: int = 2,
    head_dim: int = 32,
    n_ff: int = 128,
    linear_key_heads: int = 2,
    linear_value_heads: int = 4,
    linear_head_dim: int = 16,
    n_experts: int = 4,
    n_experts_used: int = 2,
    n_ff_expert: int = 32,
    n_ctx_train: int = 4096,
    seed: int = 0,
    weight_std: float = 0.1,
) -> Path:
    """Write a tiny random ``arch`` checkpoint directory (with its MTP layer) to ``path``."""
    # torch and transformers are an optional extra: imported when a checkpoint is built
    import torch
    from safetensors.torch import load_file, save_file

    if arch not in HYBRID_ARCHS:
        raise ValueError(f"arch must be one of {HYBRID_ARCHS}, not {arch!r}")
    path = Path(path)
    tiny_hf.build_tiny_hf(path, arch="qwen3", source_gguf=source_gguf, n_layer=1)  # tokenizer + template
    for stale in ("model.safetensors", "config.json", "generation_config.json"):
        (path / stale).unlink()
    template = _qwen35_template() if arch != "qwen3next" else official_template("qwen3")
    (path / "chat_template.jinja").write_text(template, encoding="utf-8")

    config, cls = _config(
        arch,
        tiny_hf.text_config(
            n_layer=n_layer, n_embd=n_embd, n_head=n_head, n_head_kv=n_head_kv, n_ff=n_ff, n_ctx_train=n_ctx_train
        )
        | dict(
            head_dim=head_dim,
            linear_num_key_heads=linear_key_heads,
            linear_num_value_heads=linear_value_heads,
            linear_key_head_dim=linear_head_dim,
            linear_value_head_dim=linear_head_dim,
            linear_conv_kernel_dim=4,
            tie_word_embeddings=False,
        ),
        experts=dict(
            num_experts=n_experts,
            num_experts_per_tok=n_experts_used,
            moe_intermediate_size=n_ff_expert,
            shared_expert_intermediate_size=n_ff_expert,
        ),
        rope_dims=int(head_dim * 0.25),
    )
    torch.manual_seed(seed)
    model = cls(config)
    full = config.layer_types.index("full_attention")
    mtp_layer = type(model.model.layers[full])(config, full)
    with torch.no_grad():  # weights large enough that every layer (so every cached state) matters
        for param in [*model.parameters(), *mtp_layer.parameters()]:
            if param.dim() >= 2:
                param.normal_(0.0, weight_std)
    tiny_hf.save_checkpoint(model, path)

    weights = path / "model.safetensors"
    tensors = load_file(weights)
    mtp = {f"mtp.layers.0.{name}": t for name, t in mtp_layer.state_dict().items()}
    norm = model.model.norm.weight.detach()
    mtp |= {
        "mtp.fc.weight": torch.randn(n_embd, 2 * n_embd) * weight_std,
        "mtp.pre_fc_norm_embedding.weight": norm.clone(),
        "mtp.pre_fc_norm_hidden.weight": norm.clone(),
        "mtp.norm.weight": norm.clone(),
    }
    save_file({**tensors, **{k: v.contiguous() for k, v in mtp.items()}}, weights, metadata={"format": "pt"})
    return path


def _config(arch: str, common: dict[str, Any], *, experts: dict[str, int], rope_dims: int) -> tuple[Any, type]:
    """The transformers config and model class of `arch` (one MTP layer declared where the
    released configs declare it: Qwen3.5's `mtp_num_hidden_layers`)."""
    from transformers import (
        Qwen3_5ForCausalLM,
        Qwen3_5MoeForCausalLM,
        Qwen3_5MoeTextConfig,
        Qwen3_5TextConfig,
        Qwen3NextConfig,
        Qwen3NextForCausalLM,
    )

    rope: dict[str, Any] = {"rope_type": "default", "rope_theta": 10_000_000.0, "partial_rotary_factor": 0.25}
    if arch == "qwen3next":
        config = Qwen3NextConfig(**common, **experts, rope_parameters=rope, norm_topk_prob=True)
        config.architectures = ["Qwen3NextForCausalLM"]
        return config, Qwen3NextForCausalLM
    # Qwen3.5 is natively multimodal: interleaved M-RoPE, sections over the rotary half-dims
    half = rope_dims // 2
    rope |= {"mrope_interleaved": True, "mrope_section": [half - 2 * (half // 3), half // 3, half // 3]}
    if arch == "qwen35moe":
        config = Qwen3_5MoeTextConfig(**{k: v for k, v in common.items() if k != "intermediate_size"}, **experts)
        cls: type = Qwen3_5MoeForCausalLM
    else:
        config, cls = Qwen3_5TextConfig(**common), Qwen3_5ForCausalLM
    config.rope_parameters = rope
    config.mtp_num_hidden_layers = 1
    config.architectures = [cls.__name__]
    return config, cls


def _qwen35_template() -> str:
    from qwenkit.engines.llamacpp import vendor

    return (vendor.source() / "models" / "templates" / "Qwen3.5-4B.jinja").read_text(encoding="utf-8")


def _key(arch: str, source: Path, params: dict[str, Any]) -> str:
    from qwenkit.engines.transformers.convert import source_key  # needs torch, as the checkpoint does

    blob = json.dumps(
        {
            "builder": BUILDER_VERSION,
            "module": source_digest(Path(__file__), Path(tiny_hf.__file__)),
            "arch": arch,
            "params": build_params(build_tiny_hybrid, params, fixed=("arch", "source_gguf")),
            "source": source_key(source),
        },
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def tiny_hybrid(
    arch: str, cache_dir: os.PathLike[str] | str, *, source_gguf: os.PathLike[str] | str | None = None, **params: Any
) -> Path:
    """A tiny ``arch`` checkpoint directory in ``cache_dir``, built on first use, then reused."""
    source = Path(source_gguf) if source_gguf is not None else default_source_gguf()
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    out = cache_dir / f"tiny-hf-{arch}-{_key(arch, source, params)}"
    build_once(
        out,
        out / "model.safetensors",
        lambda tmp: build_tiny_hybrid(tmp / "m", arch=arch, source_gguf=source, **params),
    )
    return out


def tiny_hybrid_gguf(
    arch: str,
    cache_dir: os.PathLike[str] | str,
    *,
    outtype: str = "f32",
    source_gguf: os.PathLike[str] | str | None = None,
    **params: Any,
) -> Path:
    """The tiny ``arch`` checkpoint converted by llama.cpp's vendored converter (MTP layer
    included), as ``outtype`` ("f32" or "q8_0"), built once."""
    if outtype not in OUTTYPES:
        raise ValueError(f"outtype must be one of {OUTTYPES}, not {outtype!r}")
    checkpoint = tiny_hybrid(arch, cache_dir, source_gguf=source_gguf, **params)
    out = Path(cache_dir) / f"tiny-gguf-{arch}-{outtype}-{checkpoint.name.rsplit('-', 1)[-1]}"

    def build(tmp: Path) -> Path:
        target = tmp / "g"
        target.mkdir()
        _convert(checkpoint, target / "model.gguf", outtype)
        return target

    build_once(out, out / "model.gguf", build)
    return out / "model.gguf"


def _convert(checkpoint: Path, outfile: Path, outtype: str) -> None:
    from qwenkit.engines.llamacpp import vendor

    script = vendor.source() / "convert_hf_to_gguf.py"
    args = [sys.executable, str(script), str(checkpoint), "--outtype", outtype, "--outfile", str(outfile)]
    done = subprocess.run(args, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"convert_hf_to_gguf.py failed on {checkpoint}:\n{done.stderr[-4000:]}")
