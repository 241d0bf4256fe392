"""The llama.cpp engine: GGUF models on CPU (and GPU offload), continuous batching."""

from qwenkit.engines.llamacpp.engine import LlamaCppEngine, LlamaCppSettings
from qwenkit.engines.llamacpp.scheduler import QueueFull

__all__ = ["LlamaCppEngine", "LlamaCppSettings", "QueueFull"]
