"""Test helpers for qwenkit and for projects built on it (tiny random-weight Qwen GGUF models)."""

from qwenkit.testing.tiny import (
    BUILDER_VERSION,
    build_tiny_gguf,
    default_source_gguf,
    official_template,
    tiny_gguf,
)

__all__ = [
    "BUILDER_VERSION",
    "build_tiny_gguf",
    "default_source_gguf",
    "official_template",
    "tiny_gguf",
]
