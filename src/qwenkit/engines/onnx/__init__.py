"""The ONNX Runtime GenAI engine (`--engine onnx`) and `qwenkit export onnx`.

Needs the `onnx` extra (`pip install 'qwenkit[onnx]'`); exporting also needs the
`transformers` extra. Modules: `engine` (the protocol, one stream and a queue), `sampling`
(search options and logit edits), `grammar` (GBNF to llguidance's Lark), `export` (the model
builder, cached).
"""

from __future__ import annotations

from qwenkit.errors import ModelLoadError

try:
    import onnxruntime_genai  # noqa: F401
except ImportError:
    raise ModelLoadError("the onnx engine needs onnxruntime-genai: pip install 'qwenkit[onnx]'") from None

from qwenkit.engines.onnx.engine import OnnxEngine, OnnxSettings, is_onnx_dir
from qwenkit.engines.onnx.export import PRECISIONS, export_onnx, exported_dir

__all__ = ["PRECISIONS", "OnnxEngine", "OnnxSettings", "export_onnx", "exported_dir", "is_onnx_dir"]
