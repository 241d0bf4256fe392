"""Shared fixtures: the real embedded model, and tiny random Qwen2/Qwen3 GGUFs built from it.

The embedded model is fetched once into $QWENKIT_HOME (the Makefile's `make test` fetches it
first); tiny models are built once per machine under $QWENKIT_HOME/test-fixtures.
"""

from __future__ import annotations

import pytest

from qwenkit.testing import tiny


@pytest.fixture(scope="session")
def source_gguf():
    """The real Qwen2.5-Coder-0.5B-Instruct GGUF (fetched on first use)."""
    try:
        return tiny.default_source_gguf()
    except tiny.SourceGGUFUnavailable as exc:
        pytest.skip(str(exc))


@pytest.fixture(scope="session")
def tiny_cache():
    from qwenkit.store import home

    path = home() / "test-fixtures"
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture(scope="session")
def tiny_qwen2(source_gguf, tiny_cache):
    return tiny.tiny_gguf("qwen2", tiny_cache, source_gguf=source_gguf)


@pytest.fixture(scope="session")
def tiny_qwen3(source_gguf, tiny_cache):
    return tiny.tiny_gguf("qwen3", tiny_cache, source_gguf=source_gguf)
