"""Where and in what precision to train: chosen from what this machine has, never assumed."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

_GIB = 1 << 30


@dataclass(frozen=True)
class Plan:
    """Device, weight dtype and memory settings for one training run, with the reason."""

    device: str  # "cuda" or "cpu"
    dtype: str  # "float32", "bfloat16" or "float16"
    gradient_checkpointing: bool
    quantize_4bit: bool
    reason: str


def cpu_bf16() -> bool:
    """The CPU has native bf16 matmuls (oneDNN says so: AVX512-BF16 or AMX)."""
    import torch

    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def available_memory(device: str) -> int:
    """Bytes free for training on `device`."""
    if device == "cuda":
        import torch

        free, _total = torch.cuda.mem_get_info()
        return int(free)
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES"))


def training_bytes(config: Any, *, dtype_bytes: int, tokens: int) -> int:
    """A rough peak for LoRA training without checkpointing: weights, per-layer activations
    (attention and MLP intermediates kept for backward) and the logits with their gradient."""
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    hidden = int(text.hidden_size)
    layers = int(text.num_hidden_layers)
    inter = int(getattr(text, "intermediate_size", 4 * hidden))
    vocab = int(text.vocab_size)
    params = vocab * hidden * (1 if getattr(text, "tie_word_embeddings", False) else 2)
    params += layers * (4 * hidden * hidden + 3 * hidden * inter)
    activations = layers * tokens * (12 * hidden + 4 * inter) * dtype_bytes
    logits = 3 * tokens * vocab * 4
    return params * dtype_bytes + activations + logits


def plan(
    config: Any,
    *,
    tokens_per_step: int,
    dtype: str = "auto",
    gradient_checkpointing: bool | None = None,
    qlora: bool = False,
) -> Plan:
    """Pick device and precision.

    CUDA: bf16 where supported (else fp16), the base in 4-bit with `qlora`. CPU: float32, which
    trains at the same speed as bf16 on most CPUs and keeps the dequantized GGUF exact, unless
    it would not fit in memory and the CPU has native bf16. Gradient checkpointing (about 30%
    slower) only when the estimated peak does not fit in 80% of free memory.
    """
    import torch

    cuda = torch.cuda.is_available()
    device = "cuda" if cuda else "cpu"
    if qlora and not cuda:
        from qwenkit.errors import QwenkitError

        raise QwenkitError("--qlora loads the base in 4-bit with bitsandbytes, which needs a CUDA GPU")
    free = available_memory(device)
    if dtype != "auto":
        chosen, why = dtype, "as asked"
    elif cuda:
        chosen = "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
        why = "CUDA"
    else:
        fits = training_bytes(config, dtype_bytes=4, tokens=tokens_per_step) < 0.8 * free
        if fits or not cpu_bf16():
            chosen = "float32"
            why = "CPU, float32 fits in memory" if fits else "CPU without native bf16"
        else:
            chosen, why = "bfloat16", "CPU with native bf16; float32 would not fit in memory"
    size = {"float32": 4}.get(chosen, 2)
    need = training_bytes(config, dtype_bytes=size, tokens=tokens_per_step)
    checkpointing = need > 0.8 * free if gradient_checkpointing is None else gradient_checkpointing
    reason = f"{device}, {chosen} ({why}); estimated peak {need / _GIB:.1f} GiB of {free / _GIB:.1f} GiB free"
    return Plan(device, chosen, checkpointing, qlora, reason)
