"""The transformers engine: Hugging Face checkpoints (and GGUF files, dequantized once) on PyTorch.

Needs the `transformers` extra (`pip install 'qwenkit[transformers]'`): torch, transformers,
accelerate. Modules: `engine` (the protocol), `loading` (dtype, device map, quantization),
`convert` (the cached GGUF conversion), `sampling` (logits processors per request), `worker`
(the batched step loop); tokens <-> bytes are `qwenkit.engines.hf_vocab`'s.
"""

from __future__ import annotations

from qwenkit.errors import ModelLoadError


def _require() -> None:
    missing = []
    for module in ("torch", "transformers", "accelerate"):
        try:
            __import__(module)
        except ImportError:
            missing.append(module)
    if missing:
        raise ModelLoadError(f"the transformers engine needs {', '.join(missing)}: pip install 'qwenkit[transformers]'")


_require()

from qwenkit.engines.transformers.convert import convert_gguf, converted_dir, gguf_tokenizer  # noqa: E402
from qwenkit.engines.transformers.engine import TransformersEngine  # noqa: E402
from qwenkit.engines.transformers.loading import TransformersSettings  # noqa: E402

__all__ = ["TransformersEngine", "TransformersSettings", "convert_gguf", "converted_dir", "gguf_tokenizer"]
