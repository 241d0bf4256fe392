"""qwenkit: run, serve, measure and adapt the Qwen model family."""

from qwenkit.api import load
from qwenkit.errors import QwenkitError
from qwenkit.generation import GenerationConfig
from qwenkit.model import Model
from qwenkit.results import ChatDelta, ChatResult

__version__ = "0.1.0"
__all__ = ["ChatDelta", "ChatResult", "GenerationConfig", "Model", "QwenkitError", "__version__", "load"]
