"""The OpenAI-compatible HTTP server.

`create_app` and `ServeSettings` are imported on first use, so that the CLI, which builds its
flags from `serve.options` at start-up, does not pay for FastAPI and the routes until it serves.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from qwenkit.serve.app import create_app
    from qwenkit.serve.settings import ServeSettings

__all__ = ["ServeSettings", "create_app"]


def __getattr__(name: str) -> Any:
    if name == "create_app":
        from qwenkit.serve.app import create_app

        return create_app
    if name == "ServeSettings":
        from qwenkit.serve.settings import ServeSettings

        return ServeSettings
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
