"""`qwenkit.load`: a model reference in, a ready `Model` out."""

from __future__ import annotations

from qwenkit import store
from qwenkit.chat import load_template
from qwenkit.errors import QwenkitError
from qwenkit.model import Model


def load(
    ref: str = "default",
    *,
    engine: str = "auto",
    n_ctx: int | None = None,
    n_threads: int | None = None,
    n_parallel: int = 1,
    max_waiting: int = 64,
    progress: bool = True,
) -> Model:
    """Fetch (if needed) and load a model.

    >>> model = qwenkit.load()  # the embedded Qwen2.5-Coder-0.5B-Instruct
    >>> print(model.chat("Write a haiku about tea").content)
    """
    local = store.resolve(ref, progress=progress)
    if engine not in ("auto", "llamacpp"):
        raise QwenkitError(f"unknown engine {engine!r} (available: auto, llamacpp)")
    if local.format != "gguf":
        raise QwenkitError(f"{local.name} is a checkpoint directory; the llama.cpp engine needs a .gguf file")
    from qwenkit.engines.llamacpp import LlamaCppEngine, LlamaCppSettings

    eng = LlamaCppEngine(local.path, LlamaCppSettings(n_ctx=n_ctx, n_threads=n_threads, n_parallel=n_parallel, max_waiting=max_waiting))
    try:
        architecture = eng.architecture()
        template = load_template(eng.chat_template(), architecture=architecture, name_hint=local.name)
    except BaseException:
        eng.close()
        raise
    return Model(eng, template, name=local.name, architecture=architecture)
