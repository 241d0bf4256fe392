"""The OpenAI-compatible HTTP server."""

from qwenkit.serve.app import create_app
from qwenkit.serve.settings import ServeSettings

__all__ = ["ServeSettings", "create_app"]
