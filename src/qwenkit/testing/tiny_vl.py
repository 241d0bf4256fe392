"""Tiny random-weight Qwen2.5-VL test models: a transformers checkpoint and its GGUF + mmproj pair.

``build_tiny_hf_vl(path, *, source_gguf, ...)`` writes a ``Qwen2_5_VLForConditionalGeneration``
built from a ``Qwen2_5_VLConfig`` of a few layers of width 64 (vision tower: depth 4, window
attention with full attention at blocks 1 and 3, patch 14, merge 2, temporal patch 2, the shapes
llama.cpp's converter and libmtmd accept), seeded random weights, the real Qwen tokenizer (as
`tiny_hf.py` copies it from a Qwen2.5 GGUF; ids 151652..151656 are its vision tokens), the official
Qwen2.5-VL chat template, and a ``preprocessor_config.json`` with small pixel limits (at most
``max_pixels`` = 112x112 by default, so an image costs at most 16 LLM tokens).

Matrices are drawn with std ``weight_std`` (0.15), not transformers' 0.02: with tiny weights
attention is near uniform and greedy output would not notice a wrong position or image token.

``tiny_hf_vl(cache_dir, *, source_gguf=None, **params) -> Path`` builds once per parameters and
reuses it; ``tiny_vl_gguf(cache_dir, ...) -> (model.gguf, mmproj.gguf)`` converts that checkpoint
with llama.cpp's vendored ``convert_hf_to_gguf.py`` (once plain, once with ``--mmproj``), f32.
Both are safe under concurrent test processes (file lock + atomic rename).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from qwenkit.testing import tiny_hf
from qwenkit.testing.build_cache import build_once, build_params, source_digest
from qwenkit.testing.tiny import default_source_gguf
from qwenkit.testing.tiny_hf import save_checkpoint, text_config

__all__ = ["BUILDER_VERSION", "QWEN25_VL_TEMPLATE", "build_tiny_hf_vl", "tiny_hf_vl", "tiny_vl_gguf"]

BUILDER_VERSION = 1
VISION_TOKEN_IDS = {"vision_start": 151652, "vision_end": 151653, "image": 151655, "video": 151656}

# The chat template of Qwen/Qwen2.5-VL-{3B,7B}-Instruct (chat_template.json), verbatim.
QWEN25_VL_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}{% if add_vision_id %}Picture {{ image_count.value }}: "
    "{% endif %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def build_tiny_hf_vl(
    path: os.PathLike[str] | str,
    *,
    source_gguf: os.PathLike[str] | str,
    n_layer: int = 2,
    n_embd: int = 64,
    n_head: int = 4,
    n_head_kv: int = 2,
    n_ff: int = 128,
    mrope_section: tuple[int, int, int] = (2, 3, 3),
    vision_depth: int = 4,
    vision_embd: int = 64,
    vision_head: int = 4,
    vision_ff: int = 128,
    fullatt_block_indexes: tuple[int, ...] = (1, 3),
    min_pixels: int = 28 * 28,
    max_pixels: int = 112 * 112,
    n_ctx_train: int = 4096,
    seed: int = 0,
    weight_std: float = 0.15,
) -> Path:
    """Write a tiny random Qwen2.5-VL checkpoint directory to ``path`` (which must not exist)."""
    # torch and transformers are an optional extra: imported when a checkpoint is built
    import torch
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    from qwenkit.engines.transformers.convert import gguf_tokenizer

    if 2 * sum(mrope_section) != n_embd // n_head:
        raise ValueError(f"mrope_section {mrope_section} must sum to half the head size {n_embd // n_head}")
    path = Path(path)
    path.mkdir(parents=True)
    tokenizer_dir = gguf_tokenizer(source_gguf)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy2(tokenizer_dir / name, path / name)
    (path / "chat_template.jinja").write_text(QWEN25_VL_TEMPLATE, encoding="utf-8")
    (path / "chat_template.json").write_text(json.dumps({"chat_template": QWEN25_VL_TEMPLATE}), encoding="utf-8")
    (path / "preprocessor_config.json").write_text(
        json.dumps(_preprocessor_config(min_pixels, max_pixels), indent=1), encoding="utf-8"
    )

    config = Qwen2_5_VLConfig(
        text_config=text_config(
            n_layer=n_layer, n_embd=n_embd, n_head=n_head, n_head_kv=n_head_kv, n_ff=n_ff, n_ctx_train=n_ctx_train
        )
        | dict(
            rope_parameters={"rope_type": "default", "rope_theta": 1_000_000.0, "mrope_section": list(mrope_section)},
            tie_word_embeddings=False,
        ),
        vision_config=dict(
            depth=vision_depth,
            hidden_size=vision_embd,
            intermediate_size=vision_ff,
            num_heads=vision_head,
            out_hidden_size=n_embd,
            patch_size=14,
            spatial_merge_size=2,
            temporal_patch_size=2,
            window_size=112,
            fullatt_block_indexes=list(fullatt_block_indexes),
            in_channels=3,
        ),
        image_token_id=VISION_TOKEN_IDS["image"],
        video_token_id=VISION_TOKEN_IDS["video"],
        vision_start_token_id=VISION_TOKEN_IDS["vision_start"],
        vision_end_token_id=VISION_TOKEN_IDS["vision_end"],
        tie_word_embeddings=False,
    )
    config.architectures = ["Qwen2_5_VLForConditionalGeneration"]
    torch.manual_seed(seed)
    model = Qwen2_5_VLForConditionalGeneration(config)
    with torch.no_grad():  # weights large enough that attention (so every position) matters
        for param in model.parameters():
            if param.dim() >= 2:
                param.normal_(0.0, weight_std)
    save_checkpoint(model, path)
    return path


def _preprocessor_config(min_pixels: int, max_pixels: int) -> dict[str, Any]:
    """The released Qwen2.5-VL preprocessor_config.json with small pixel limits."""
    return {
        "do_convert_rgb": True,
        "do_normalize": True,
        "do_rescale": True,
        "do_resize": True,
        "image_mean": [0.48145466, 0.4578275, 0.40821073],
        "image_std": [0.26862954, 0.26130258, 0.27577711],
        "image_processor_type": "Qwen2VLImageProcessor",
        "processor_class": "Qwen2_5_VLProcessor",
        "merge_size": 2,
        "patch_size": 14,
        "temporal_patch_size": 2,
        "resample": 3,
        "rescale_factor": 0.00392156862745098,
        "min_pixels": min_pixels,
        "max_pixels": max_pixels,
        "size": {"shortest_edge": min_pixels, "longest_edge": max_pixels},
    }


def _cache_key(source: Path, params: dict[str, Any]) -> str:
    from qwenkit.engines.transformers.convert import source_key  # needs torch, as the checkpoint does

    merged = build_params(build_tiny_hf_vl, params, fixed=("source_gguf",))
    merged = {k: list(v) if isinstance(v, tuple) else v for k, v in merged.items()}
    blob = json.dumps(
        {
            "builder": BUILDER_VERSION,
            "module": source_digest(Path(__file__), Path(tiny_hf.__file__)),
            "params": merged,
            "source": source_key(source),
        },
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def tiny_hf_vl(
    cache_dir: os.PathLike[str] | str, *, source_gguf: os.PathLike[str] | str | None = None, **params: Any
) -> Path:
    """A tiny Qwen2.5-VL checkpoint directory in ``cache_dir``, built on first use, then reused."""
    source = Path(source_gguf) if source_gguf is not None else default_source_gguf()
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    out = cache_dir / f"tiny-hf-qwen2-vl-{_cache_key(source, params)}"
    build_once(out, out / "model.safetensors", lambda tmp: build_tiny_hf_vl(tmp / "m", source_gguf=source, **params))
    return out


def tiny_vl_gguf(
    cache_dir: os.PathLike[str] | str, *, source_gguf: os.PathLike[str] | str | None = None, **params: Any
) -> tuple[Path, Path]:
    """The tiny Qwen2.5-VL checkpoint converted to (model.gguf, mmproj.gguf), f32, built once."""
    checkpoint = tiny_hf_vl(cache_dir, source_gguf=source_gguf, **params)
    out = Path(cache_dir) / f"tiny-vl-gguf-{checkpoint.name.rsplit('-', 1)[-1]}"

    def build(tmp: Path) -> Path:
        target = tmp / "g"
        target.mkdir()
        _convert(checkpoint, target / "model.gguf", mmproj=False)
        _convert(checkpoint, target / "mmproj.gguf", mmproj=True)
        return target

    build_once(out, out / "mmproj.gguf", build)
    return out / "model.gguf", out / "mmproj.gguf"


def _convert(checkpoint: Path, outfile: Path, *, mmproj: bool) -> None:
    from qwenkit.engines.llamacpp import vendor

    script = vendor.source() / "convert_hf_to_gguf.py"
    args = [sys.executable, str(script), str(checkpoint), "--outtype", "f32", "--outfile", str(outfile)]
    done = subprocess.run([*args, *(["--mmproj"] if mmproj else [])], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"convert_hf_to_gguf.py failed on {checkpoint}:\n{done.stderr[-4000:]}")
