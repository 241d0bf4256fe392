"""`qwenkit.load`: a model reference in, a ready `Model` out."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from qwenkit import store
from qwenkit.chat import load_template
from qwenkit.errors import QwenkitError
from qwenkit.model import Model

ENGINES = ("auto", "llamacpp", "transformers")


def pick_engine(engine: str, fmt: str) -> str:
    """The engine to run weights of format `fmt` ("gguf" or "hf") on: `auto` picks llama.cpp
    for a GGUF file and transformers for a checkpoint directory."""
    if engine not in ENGINES:
        raise QwenkitError(f"unknown engine {engine!r} (available: {', '.join(ENGINES)})")
    if engine == "auto":
        return "llamacpp" if fmt == "gguf" else "transformers"
    if engine == "llamacpp" and fmt != "gguf":
        raise QwenkitError(
            "this is a checkpoint directory; the llama.cpp engine needs a .gguf file (use --engine transformers)"
        )
    return engine


def load(
    ref: str = "default",
    *,
    engine: str = "auto",
    n_ctx: int | None = None,
    n_threads: int | None = None,
    n_parallel: int | None = None,
    max_waiting: int = 64,
    progress: bool = True,
    dtype: str = "auto",
    device_map: Any = None,
    quantization: str | None = None,
    attn_implementation: str = "sdpa",
    lora: Mapping[str, str | Path] | None = None,
) -> Model:
    """Fetch (if needed) and load a model.

    `engine`: "auto" (llama.cpp for a GGUF file, transformers for a checkpoint directory),
    "llamacpp" or "transformers" (a GGUF is then dequantized once and cached as a checkpoint).
    `n_parallel`: requests decoded together (default 1 on llama.cpp, 8 on transformers).
    Transformers only: `dtype` ("auto", "bf16", "fp16", "fp32"), `device_map`,
    `quantization` (None, "8bit", "4bit": bitsandbytes, CUDA only), `attn_implementation`.
    `lora`: GGUF LoRA adapters to load, by name (llama.cpp); a turn applies them with
    `adapters=[(name, scale)]`.

    >>> model = qwenkit.load()  # the embedded Qwen2.5-Coder-0.5B-Instruct
    >>> print(model.chat("Write a haiku about tea").content)
    """
    if engine not in ENGINES:  # before any download
        raise QwenkitError(f"unknown engine {engine!r} (available: {', '.join(ENGINES)})")
    local = store.resolve(ref, progress=progress)
    chosen = pick_engine(engine, local.format)
    if chosen == "transformers":
        from qwenkit.engines.transformers import TransformersEngine, TransformersSettings

        settings = TransformersSettings(
            dtype=dtype,
            device_map=device_map,
            quantization=quantization,
            attn_implementation=attn_implementation,
            n_ctx=n_ctx,
            n_parallel=n_parallel or 8,
            max_waiting=max_waiting,
            n_threads=n_threads,
        )
        eng = TransformersEngine(local.path, settings)
    else:
        if quantization is not None or str(dtype).lower() != "auto" or device_map is not None:
            raise QwenkitError(
                "dtype, device_map and quantization apply to the transformers engine; "
                "a GGUF on llama.cpp keeps its own quantization (use --engine transformers)"
            )
        from qwenkit.engines.llamacpp import LlamaCppEngine, LlamaCppSettings

        eng = LlamaCppEngine(
            local.path,
            LlamaCppSettings(n_ctx=n_ctx, n_threads=n_threads, n_parallel=n_parallel or 1, max_waiting=max_waiting),
        )
    try:
        for name, path in (lora or {}).items():
            eng.load_adapter(name, path)
        architecture = eng.architecture()
        template = load_template(eng.chat_template(), architecture=architecture, name_hint=local.name)
    except BaseException:
        eng.close()
        raise
    return Model(eng, template, name=local.name, architecture=architecture)
