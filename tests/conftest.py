"""Shared fixtures: the real embedded model, and tiny random Qwen2/Qwen3 GGUFs built from it.

The embedded model is fetched once into $QWENKIT_HOME (the Makefile's `make test` fetches it
first); tiny models are built once per machine under $QWENKIT_HOME/test-fixtures.
"""

from __future__ import annotations

import contextlib
import os

# llama.cpp's OpenMP workers spin while they wait. The suite runs a test process and servers side
# by side on few cores, where spinning threads starve each other (10-100x slower): wait passively.
# Set before anything loads libgomp; subprocesses (servers under test) inherit it.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pytest

from qwenkit.testing import tiny


@pytest.fixture(scope="session")
def app_server():
    """`app_server(model, **config)`: the server `serve_helpers.serve_in_process(model, **config)`
    builds, in this process, started on first use and shared by every test module that asks for
    the same configuration (stopped at the end of the session). Tests that change a server's state
    for good (stored responses, rate limits, loaded adapters) ask for a configuration of their own."""
    from serve_helpers import serve_in_process

    with contextlib.ExitStack() as stack:
        started = {}

        def get(model, **config):
            key = (str(model), tuple(sorted(config.items())))
            if key not in started:
                started[key] = stack.enter_context(serve_in_process(model, **config))
            return started[key]

        yield get


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


@pytest.fixture(scope="session")
def tiny_loras(tiny_qwen2, tiny_cache):
    """Two random GGUF LoRAs on `tiny_qwen2`, {"alpha": seed 0, "beta": seed 1}, built once per machine
    (skipped where peft, the tune extra, is missing)."""
    pytest.importorskip("peft", reason="the tune extra is not installed (a LoRA is made with peft)")
    from lora_helpers import gguf_loras

    return gguf_loras(tiny_qwen2, tiny_cache)


# ----- the transformers engine (skipped where torch/transformers are not installed) -------


def _needs_transformers():
    try:
        import torch  # noqa: F401
        import transformers  # noqa: F401
    except ImportError as exc:
        pytest.skip(f"the transformers extra is not installed ({exc})")


@pytest.fixture(scope="session")
def tiny_hf_qwen2(source_gguf, tiny_cache):
    """A tiny random Qwen2 Hugging Face checkpoint directory with the real tokenizer."""
    _needs_transformers()
    from qwenkit.testing.tiny_hf import tiny_hf

    return tiny_hf("qwen2", tiny_cache, source_gguf=source_gguf)


@pytest.fixture(scope="session")
def tiny_hf_qwen3(source_gguf, tiny_cache):
    """A tiny random Qwen3 Hugging Face checkpoint directory (<think> tokens, Qwen3 template)."""
    _needs_transformers()
    from qwenkit.testing.tiny_hf import tiny_hf

    return tiny_hf("qwen3", tiny_cache, source_gguf=source_gguf)


@pytest.fixture(scope="session")
def converted_source(source_gguf):
    """The real embedded GGUF dequantized to a float32 transformers checkpoint (converted once)."""
    _needs_transformers()
    from qwenkit.engines.transformers import convert_gguf

    return convert_gguf(source_gguf)


# ----- the onnx engine (skipped where onnxruntime-genai or the builder's needs are missing) ----


def _tiny_onnx(checkpoint, tiny_cache):
    """`checkpoint` exported to an fp32 ONNX Runtime GenAI model, once, under test-fixtures."""
    for module in ("onnxruntime_genai", "onnx", "onnx_ir"):
        pytest.importorskip(module, reason="the onnx extra is not installed")
    from qwenkit.engines.onnx import export_onnx, exported_dir

    return export_onnx(checkpoint, "fp32", out=tiny_cache / f"onnx-{exported_dir(checkpoint, 'fp32').name}")


@pytest.fixture(scope="session")
def tiny_onnx_qwen2(tiny_hf_qwen2, tiny_cache):
    """The tiny Qwen2 checkpoint as an fp32 ONNX model directory."""
    return _tiny_onnx(tiny_hf_qwen2, tiny_cache)


@pytest.fixture(scope="session")
def tiny_onnx_qwen3(tiny_hf_qwen3, tiny_cache):
    """The tiny Qwen3 checkpoint as an fp32 ONNX model directory."""
    return _tiny_onnx(tiny_hf_qwen3, tiny_cache)


# ----- tiny Qwen2.5-VL models (vision; the transformers checkpoint needs torch/transformers) ----


@pytest.fixture(scope="session")
def tiny_hf_qwen2_vl(source_gguf, tiny_cache):
    """A tiny random Qwen2.5-VL checkpoint directory (real tokenizer, small pixel limits)."""
    _needs_transformers()
    from qwenkit.testing.tiny_vl import tiny_hf_vl

    return tiny_hf_vl(tiny_cache, source_gguf=source_gguf)


@pytest.fixture(scope="session")
def tiny_vl_gguf(source_gguf, tiny_cache):
    """(model.gguf, mmproj.gguf) converted from `tiny_hf_qwen2_vl` with llama.cpp's converter."""
    _needs_transformers()
    from qwenkit.testing.tiny_vl import tiny_vl_gguf

    return tiny_vl_gguf(tiny_cache, source_gguf=source_gguf)


# ----- tiny hybrid-attention models (Qwen3.5 dense, Qwen3.5-MoE, Qwen3-Next; MTP layer included) ----

HYBRID_ARCHS = ("qwen35", "qwen35moe", "qwen3next")


@pytest.fixture(scope="session", params=HYBRID_ARCHS)
def hybrid_arch(request):
    """Each tiny hybrid architecture in turn (llama.cpp's names)."""
    return request.param


@pytest.fixture(scope="session")
def tiny_hf_hybrid(hybrid_arch, source_gguf, tiny_cache):
    """The tiny random `hybrid_arch` transformers checkpoint (its `mtp.*` layer included)."""
    _needs_transformers()
    from qwenkit.testing.tiny_hybrid import tiny_hybrid

    return tiny_hybrid(hybrid_arch, tiny_cache, source_gguf=source_gguf)


@pytest.fixture(scope="session")
def tiny_hybrid_gguf(hybrid_arch, source_gguf, tiny_cache):
    """`tiny_hf_hybrid` converted to an f32 GGUF by llama.cpp's vendored converter."""
    _needs_transformers()
    from qwenkit.testing.tiny_hybrid import tiny_hybrid_gguf

    return tiny_hybrid_gguf(hybrid_arch, tiny_cache, source_gguf=source_gguf)
