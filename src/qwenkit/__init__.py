"""qwenkit: run, serve, measure and adapt the Qwen model family."""

from qwenkit.api import load
from qwenkit.errors import QwenkitError
from qwenkit.model import Model
from qwenkit.results import ChatDelta, ChatResult

__version__ = "0.1.0"
__all__ = ["ChatDelta", "ChatResult", "Model", "QwenkitError", "load", "__version__"]
