"""The vLLM engine beyond the engine contract: loading through `qwenkit.load`, Qwen3's thinking
budget enforced natively by vLLM, GBNF grammars on vLLM's structured outputs, and
`qwenkit serve --engine vllm`.

The first tests run everywhere (they check the errors where vLLM is absent or not chosen); the
others need vLLM, which lives in an environment of its own (`make vllm-env && make test-vllm`),
and run on tiny random checkpoints with head_dim 64 (the smallest vLLM's CPU attention takes).
"""

from __future__ import annotations

import importlib.util
import json
import os

import pytest

import qwenkit
from qwenkit.engines.base import SamplingParams
from qwenkit.errors import ModelLoadError, QwenkitError

HAS_VLLM = importlib.util.find_spec("vllm") is not None
needs_vllm = pytest.mark.skipif(
    not HAS_VLLM,
    reason="vLLM is not installed here: it runs in an environment of its own; "
    "`make vllm-env && make test-vllm` runs these tests there (README, Scaling out)",
)


def test_parallelism_needs_the_vllm_engine(tiny_qwen2):
    with pytest.raises(QwenkitError, match="apply to --engine vllm"):
        qwenkit.load(str(tiny_qwen2), tensor_parallel=2, progress=False)
    with pytest.raises(QwenkitError, match="apply to --engine vllm"):
        qwenkit.load(str(tiny_qwen2), distributed_executor_backend="ray", progress=False)


@pytest.mark.skipif(HAS_VLLM, reason="checks the error shown where vLLM is not installed")
def test_without_vllm_the_engine_says_how_to_get_it(tiny_hf_qwen2):
    with pytest.raises(ModelLoadError, match="make vllm-env"):
        qwenkit.load(str(tiny_hf_qwen2), engine="vllm", progress=False)


def _cli_error(*args: str) -> str:
    """Run `qwenkit ARGS`, expecting a failure; return its one stderr line."""
    import subprocess
    import sys

    cmd = [sys.executable, "-c", "from qwenkit.cli import main; main()", *args]
    proc = subprocess.run(cmd, capture_output=True, timeout=300, env={**os.environ, "NO_COLOR": "1"})
    lines = proc.stderr.decode().strip().splitlines()
    assert proc.returncode != 0 and proc.stdout == b""
    assert len(lines) == 1 and lines[0].startswith("error:"), proc.stderr.decode()
    return lines[0]


def test_cli_vllm_options_fail_in_one_line(tiny_qwen2, tiny_hf_qwen2):
    assert "apply to --engine vllm" in _cli_error("run", "hi", "-m", str(tiny_qwen2), "--tensor-parallel", "2")
    if not HAS_VLLM:
        assert "make vllm-env" in _cli_error("run", "hi", "-m", str(tiny_hf_qwen2), "--engine", "vllm")


# ----- with vLLM ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def vllm_env():
    for key, value in (("VLLM_CPU_KVCACHE_SPACE", "1"), ("VLLM_CPU_OMP_THREADS_BIND", "0"), ("HF_HUB_OFFLINE", "1")):
        os.environ.setdefault(key, value)


@pytest.fixture(scope="module")
def tiny_vllm_qwen3(source_gguf, tiny_cache):
    from qwenkit.testing.tiny_hf import tiny_hf

    return tiny_hf("qwen3", tiny_cache, source_gguf=source_gguf, n_embd=128, n_head=2, n_head_kv=1, head_dim=64)


@pytest.fixture(scope="module")
def qwen3(vllm_env, tiny_vllm_qwen3):
    with qwenkit.load(str(tiny_vllm_qwen3), engine="vllm", n_ctx=1024, n_parallel=2, progress=False) as model:
        yield model


@needs_vllm
def test_executor_is_checked(tiny_vllm_qwen3):
    with pytest.raises(QwenkitError, match="mp or ray"):
        qwenkit.load(str(tiny_vllm_qwen3), engine="vllm", distributed_executor_backend="threads", progress=False)


@needs_vllm
def test_thinking_budget_on_vllm(qwen3):
    """Qwen3's hybrid template leaves `<think>` to the model: the budget is emulated per delta
    (forced tokens restart the vLLM request), grace and answer reserve as on every engine."""
    from qwenkit.chat.budget import GRACE_TOKENS

    assert qwen3.engine.name == "vllm" and qwen3.architecture == "qwen3"
    budget = 16
    r = qwen3.chat("Solve 2+2.", max_tokens=budget + 120, thinking_budget=budget, seed=7)
    assert 0 < r.usage.reasoning_tokens <= budget + GRACE_TOKENS + len(qwen3._closing) + 1
    assert "Considering the limited time" in r.reasoning
    assert r.content.strip()


@needs_vllm
def test_thinking_budget_in_an_open_think_block_is_vllms(qwen3):
    """A prompt that opens `<think>` itself: vLLM forces the stop phrase and `</think>` at the
    budget (`thinking_token_budget`; no grace), as ordinary tokens, not forced ones."""
    from qwenkit.chat.budget import ThinkingBudget, closing_text

    engine = qwen3.engine
    prompt = engine.tokenize("<|im_start|>user\nSolve 2+2.<|im_end|>\n<|im_start|>assistant\n<think>\n")
    assert engine.opens_reasoning(prompt) and not engine.opens_reasoning(prompt[:-2])
    closing = engine.tokenize(closing_text())
    think_open, think_close = engine.tokenize("<think>")[0], engine.tokenize("</think>")[0]
    controller = ThinkingBudget(
        budget=16,
        max_tokens=200,
        closing=closing,
        think_open=think_open,
        think_close=think_close,
        starts_in_thinking=True,
        token_text=lambda t: engine.detokenize([t]),
    )
    chunks = list(engine.generate(prompt, SamplingParams(max_tokens=200, temperature=0), controller))
    ids = [t for c in chunks for t in c.token_ids]
    assert not any(c.forced for c in chunks)
    at = ids.index(think_close)
    start = at - (len(closing) - 2)  # where the stop phrase begins
    assert ids[start : at + 1] == closing[:-1]  # the phrase, then </think>
    assert 0 < start <= 16  # thinking stopped at the budget (vLLM counts the prompt's "\n" in it)
    assert len(ids) > at + 1  # the answer follows


@needs_vllm
def test_json_schema_grammar_through_structured_outputs(qwen3):
    from qwenkit.chat.grammar import json_grammar

    schema = {
        "type": "object",
        "properties": {"ok": {"type": "boolean"}, "colour": {"enum": ["red", "green/blue"]}},
        "required": ["ok", "colour"],
        "additionalProperties": False,
    }
    prompt = qwen3.engine.tokenize("<|im_start|>user\nJSON please<|im_end|>\n<|im_start|>assistant\n")
    params = SamplingParams(max_tokens=60, grammar=json_grammar(schema), temperature=1.0, seed=3)
    chunks = list(qwen3.engine.generate(prompt, params))
    text = "".join(c.text for c in chunks)
    assert chunks[-1].finish_reason == "stop", text
    value = json.loads(text)
    assert set(value) == {"ok", "colour"} and value["colour"] in ("red", "green/blue")


@needs_vllm
def test_serve_on_vllm(vllm_env, source_gguf, tiny_cache, monkeypatch):
    """`qwenkit serve --engine vllm`: chat completions, streaming, a JSON response format."""
    import serve_helpers
    from serve_helpers import sse_events, start_server

    from qwenkit.testing.tiny_hf import tiny_hf

    monkeypatch.setattr(serve_helpers, "START_TIMEOUT_S", 600.0)  # vLLM starts two processes
    path = tiny_hf("qwen2", tiny_cache, source_gguf=source_gguf, n_embd=128, n_head=2, n_head_kv=1)
    with start_server(path, "--engine", "vllm", parallel=2, ctx=1024) as server:
        client = server.client()
        r = client.chat.completions.create(
            model="default", messages=[{"role": "user", "content": "hi"}], max_tokens=8, temperature=0
        )
        assert r.choices[0].finish_reason == "length" and r.usage.completion_tokens == 8
        body = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 8, "temperature": 0, "stream": True}
        with server.http() as h, h.stream("POST", "/v1/chat/completions", json=body) as response:
            text = "".join(
                e["choices"][0]["delta"].get("content") or ""
                for e in sse_events(response)
                if isinstance(e, dict) and e["choices"]
            )
        assert text == r.choices[0].message.content
        schema = {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"]}
        schema["additionalProperties"] = False
        r = client.chat.completions.create(
            model="default",
            messages=[{"role": "user", "content": "json please"}],
            max_tokens=40,
            temperature=0,
            response_format={"type": "json_schema", "json_schema": {"name": "r", "schema": schema}},
        )
        assert isinstance(json.loads(r.choices[0].message.content)["ok"], bool)
