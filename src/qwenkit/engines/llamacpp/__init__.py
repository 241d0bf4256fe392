"""The llama.cpp engine: GGUF models on CPU (and GPU offload), continuous batching."""

from qwenkit.engines.llamacpp.engine import LlamaCppEngine, LlamaCppSettings

__all__ = ["LlamaCppEngine", "LlamaCppSettings"]
