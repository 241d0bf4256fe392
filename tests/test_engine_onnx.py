"""The onnx engine (ONNX Runtime GenAI) and `qwenkit export onnx`, on tiny random Qwen2/Qwen3
checkpoints exported at fp32.

Greedy output of a random model is a meaningless but deterministic token sequence whose
logits are nearly flat, so the same tokens from the transformers engine on the same checkpoint
(parity) leave no room for a wrong position, a dropped KV entry or a mis-fed forced token.
"""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import time

import pytest

pytest.importorskip("onnxruntime_genai", reason="the onnx extra is not installed")

from engine_helpers import ENDOFTEXT, GREEDY, IM_END, PROMPTS, ForceAfter, choices, ids_of, run, text_of

import qwenkit
from qwenkit.engines.base import Chunk, Engine, QueueFull, SamplingParams
from qwenkit.engines.onnx import OnnxEngine, OnnxSettings, export_onnx
from qwenkit.engines.onnx.grammar import gbnf_to_lark
from qwenkit.errors import BadRequest, ModelLoadError, QwenkitError

THREADS = int(os.environ.get("QWENKIT_TEST_TORCH_THREADS", "1"))


@pytest.fixture(scope="module")
def q2(tiny_onnx_qwen2):
    engine = OnnxEngine(tiny_onnx_qwen2, OnnxSettings(n_ctx=512, n_threads=THREADS, max_waiting=1))
    yield engine
    engine.close()


@pytest.fixture(scope="module")
def q3(tiny_onnx_qwen3):
    engine = OnnxEngine(tiny_onnx_qwen3, OnnxSettings(n_ctx=512, n_threads=THREADS))
    yield engine
    engine.close()


# ----- the protocol -----------------------------------------------------------------------


def test_protocol_and_metadata(q2, q3):
    for engine, arch in ((q2, "qwen2"), (q3, "qwen3")):
        assert isinstance(engine, Engine)
        assert engine.name == "onnx" and engine.architecture() == arch
        assert {IM_END, ENDOFTEXT} <= engine.eos_token_ids()
        assert "<|im_start|>" in engine.chat_template()
        assert engine.n_ctx == 512
    assert "enable_thinking" in q3.chat_template()
    assert q2.detokenize(q2.tokenize("你好，世界 🎉")) == "你好，世界 🎉"
    assert q2.n_vocab == 151936
    assert q2.token_bytes(IM_END) == b"<|im_end|>" and q2.token_bytes(q2.tokenize("hi")[0]) == b"hi"


def test_streams_one_chunk_per_token(q2):
    chunks = run(q2, PROMPTS[0], max_tokens=12, **GREEDY)
    assert all(len(c.token_ids) == 1 for c in chunks) and len(chunks) == 12
    assert [c.finish_reason for c in chunks] == [None] * 11 + ["length"]
    assert text_of(chunks) == q2.detokenize(ids_of(chunks))


@pytest.mark.parametrize("arch", ["qwen2", "qwen3"])
def test_greedy_parity_with_transformers(arch, request):
    """fp32 export vs the checkpoint on transformers: the same tokens, forced ones included."""
    pytest.importorskip("torch", reason="the transformers extra is not installed")
    from qwenkit.engines.transformers import TransformersEngine, TransformersSettings

    onnx = OnnxEngine(request.getfixturevalue(f"tiny_onnx_{arch}"), OnnxSettings(n_ctx=512, n_threads=THREADS))
    hf = TransformersEngine(
        request.getfixturevalue(f"tiny_hf_{arch}"), TransformersSettings(n_ctx=512, n_threads=THREADS)
    )
    try:
        for prompt in PROMPTS:
            assert ids_of(run(onnx, prompt, max_tokens=16, **GREEDY)) == ids_of(
                run(hf, prompt, max_tokens=16, **GREEDY)
            )
        forced = onnx.tokenize(" forced words")
        a = ids_of(run(onnx, PROMPTS[0], ForceAfter(3, forced), max_tokens=16, **GREEDY))
        b = ids_of(run(hf, PROMPTS[0], ForceAfter(3, forced), max_tokens=16, **GREEDY))
        assert a == b and a[3 : 3 + len(forced)] == forced
    finally:
        onnx.close()
        hf.close()


def test_sampling_settings(q2):
    greedy = ids_of(run(q2, PROMPTS[1], max_tokens=10, **GREEDY))
    sampled = dict(max_tokens=10, temperature=1.0)  # seeds and logit bias: tests/test_engine_contract.py
    assert ids_of(run(q2, PROMPTS[1], seed=1, top_k=1, **sampled)) == greedy
    assert ids_of(run(q2, PROMPTS[1], seed=2, min_p=1.0, **sampled)) == greedy
    for penalty in (dict(presence_penalty=1000.0), dict(repetition_penalty=1e9)):
        ids = ids_of(run(q2, PROMPTS[0], max_tokens=40, **penalty, **GREEDY))
        assert len(set(ids)) == len(ids)


# ----- logprobs and n choices --------------------------------------------------------------


def test_logprobs_of_greedy_and_sampled_tokens(q2):
    chunks = run(q2, PROMPTS[0], max_tokens=6, logprobs=5, **GREEDY)
    logprobs = [lp for c in chunks for lp in c.logprobs or []]
    assert [lp.token for lp in logprobs] == ids_of(chunks)
    for lp in logprobs:
        assert len(lp.top) == 5 and lp.top[0][0] == lp.token
        assert lp.logprob == pytest.approx(lp.top[0][1], abs=1e-6) and lp.logprob <= 0
        assert [v for _, v in lp.top] == sorted((v for _, v in lp.top), reverse=True)
    assert all(c.logprobs is None and c.prompt_logprobs is None for c in run(q2, PROMPTS[0], max_tokens=2))
    # after logit bias (the biased token is certain), before temperature and min-p
    biased = run(q2, PROMPTS[1], max_tokens=2, logprobs=0, logit_bias=((1234, 100.0),), temperature=5.0, min_p=0.5)
    assert [(lp.token, lp.top) for c in biased for lp in c.logprobs] == [(1234, ())] * 2
    assert all(lp.logprob == pytest.approx(0.0, abs=1e-4) for c in biased for lp in c.logprobs)
    forced = run(q2, PROMPTS[0], ForceAfter(1, [100, 101]), max_tokens=4, logprobs=1, **GREEDY)
    assert [c.logprobs is None for c in forced] == [False, True, False]


def test_prompt_logprobs_agree_with_generated_ones(q2):
    greedy = run(q2, PROMPTS[0], max_tokens=3, logprobs=2, **GREEDY)
    ids = q2.tokenize(PROMPTS[0]) + ids_of(greedy)
    scored = run(q2, ids, max_tokens=2, prompt_logprobs=2, **GREEDY)
    prompt = scored[0].prompt_logprobs
    assert prompt is not None and len(prompt) == len(ids) and prompt[0] is None
    assert [lp.token for lp in prompt[1:]] == ids[1:]
    for mine, theirs in zip(prompt[-3:], [lp for c in greedy for lp in c.logprobs], strict=True):
        assert mine.logprob == pytest.approx(theirs.logprob, abs=1e-3) and mine.top[0][0] == theirs.top[0][0]
    assert all(c.prompt_logprobs is None for c in scored[1:])


def test_n_choices_decode_one_after_another(q2):
    sampled = choices(q2, PROMPTS[1], n=3, max_tokens=8, temperature=1.5, prompt_logprobs=0, logprobs=0)
    tokens = {i: ids_of(cs) for i, cs in sampled.items()}
    assert len({tuple(t) for t in tokens.values()}) > 1  # sampled separately
    for cs in sampled.values():
        assert cs[0].prompt_logprobs is not None and all(c.prompt_logprobs is None for c in cs[1:])
        assert [lp.token for c in cs for lp in c.logprobs] == ids_of(cs)
    assert sampled[0][0].prompt_logprobs == sampled[2][0].prompt_logprobs  # scored once
    greedy = choices(q2, PROMPTS[1], n=2, max_tokens=4, **GREEDY)
    assert ids_of(greedy[0]) == ids_of(greedy[1]) == ids_of(run(q2, PROMPTS[1], max_tokens=4, **GREEDY))
    assert q2.stats().running == 0


def test_json_schema_through_guidance(q2):
    from qwenkit.serve.structured import json_grammar

    schema = {
        "type": "object",
        "properties": {"ok": {"type": "boolean"}, "colour": {"enum": ["red", "green/blue"]}},
        "required": ["ok", "colour"],
        "additionalProperties": False,
    }
    chunks = run(q2, PROMPTS[0], max_tokens=60, grammar=json_grammar(schema), temperature=1.0, seed=3)
    assert chunks[-1].finish_reason == "stop", text_of(chunks)
    value = json.loads(text_of(chunks))
    assert set(value) == {"ok", "colour"} and value["colour"] in ("red", "green/blue")
    # logprobs under a grammar: the runtime's repetition penalty is in them, its mask is not
    scored = run(
        q2, PROMPTS[0], max_tokens=60, grammar=json_grammar(schema), logprobs=1, repetition_penalty=1.1, **GREEDY
    )
    assert json.loads(text_of(scored)) and all(lp.logprob <= 0 for c in scored for lp in c.logprobs or [])


def test_gbnf_to_lark_rewrites_names_classes_and_strings():
    lark = gbnf_to_lark('root ::= item-list "\\x41\\n"\nitem-list ::= [a-z/]{1,3} ("," [^"\\\\])* . # c\n')
    assert lark.splitlines() == [
        'start: r_item_list "A\\n"',
        'r_item_list: /[a-z\\/]/ {1,3} ( "," /[^"\\\\]/ ) * /(?s:.)/',
    ]
    with pytest.raises(BadRequest, match="root"):
        gbnf_to_lark('other ::= "a"')


def test_refused_settings_are_named(q2):
    emit = lambda c: None  # noqa: E731
    with pytest.raises(BadRequest, match="min_p"):
        q2.submit([1, 2], SamplingParams(grammar='root ::= "a"', min_p=0.1), emit)
    with pytest.raises(BadRequest, match="logit_bias"):
        q2.submit([1, 2], SamplingParams(grammar='root ::= "a"', logit_bias=((5, 1.0),)), emit)


def test_cancel_queue_and_stats(q2):
    """One stream: a second request waits, a third is refused; cancelling frees the stream."""
    got: queue.Queue[Chunk] = queue.Queue()
    prompt = q2.tokenize(PROMPTS[0])
    first = q2.submit(prompt, SamplingParams(max_tokens=400, **GREEDY), got.put)
    assert got.get(timeout=60).finish_reason is None  # running
    second_chunks: queue.Queue[Chunk] = queue.Queue()
    second = q2.submit(prompt, SamplingParams(max_tokens=3, **GREEDY), second_chunks.put)
    stats = q2.stats()
    assert stats.running == 1 and stats.waiting == 1 and stats.prompt_tokens >= len(prompt)
    with pytest.raises(QueueFull):
        q2.submit(prompt, SamplingParams(max_tokens=3), lambda c: None)
    first.cancel()
    for _ in range(500):
        last = got.get(timeout=60)
        if last.finish_reason:
            break
    assert last.finish_reason == "abort" and last.error is None
    done = [second_chunks.get(timeout=60) for _ in range(3)]
    assert done[-1].finish_reason == "length"  # the waiting one ran after it
    assert second.cancelled is False
    gen = q2.generate(prompt, SamplingParams(max_tokens=400, **GREEDY))
    next(gen)
    gen.close()  # closing the iterator cancels
    for _ in range(200):
        if not q2.stats().running:
            break
        time.sleep(0.05)
    assert q2.stats().running == 0


def test_thinking_budget_on_onnx(tiny_onnx_qwen3):
    """The thinking budget is a StepController: forced `</think>` lands inside the budget."""
    from qwenkit.chat.budget import GRACE_TOKENS

    with qwenkit.load(str(tiny_onnx_qwen3), n_ctx=1024, n_threads=THREADS, progress=False) as model:
        assert model.engine.name == "onnx" and model.architecture == "qwen3"
        budget = 16
        r = model.chat("Solve 2+2.", max_tokens=budget + 120, thinking_budget=budget, seed=7)
        assert 0 < r.usage.reasoning_tokens <= budget + GRACE_TOKENS + len(model._closing) + 1
        assert "Considering the limited time" in r.reasoning
        # the answer took the rest of max_tokens (a random model never ends its turn), outside the reasoning
        assert r.finish_reason == "length" and r.usage.completion_tokens == budget + 120
        assert r.content.strip() and "</think>" not in r.content and "</think>" not in r.reasoning


# ----- export -----------------------------------------------------------------------------


def test_export_is_cached_and_refuses_what_the_builder_cannot(tiny_hf_qwen2, tiny_onnx_qwen2, tiny_cache, tmp_path):
    out = tiny_cache / tiny_onnx_qwen2.name
    stamp = (tiny_onnx_qwen2 / "qwenkit-onnx.json").stat().st_mtime_ns
    assert export_onnx(tiny_hf_qwen2, "fp32", out=out) == tiny_onnx_qwen2  # reused, not rebuilt
    assert (tiny_onnx_qwen2 / "qwenkit-onnx.json").stat().st_mtime_ns == stamp
    moe = tmp_path / "moe"
    moe.mkdir()
    (moe / "config.json").write_text(json.dumps({"architectures": ["Qwen3MoeForCausalLM"]}))
    with pytest.raises(ModelLoadError, match="no Qwen3-MoE support"):
        export_onnx(moe, "int4")
    with pytest.raises(QwenkitError, match="unknown precision"):
        export_onnx(tiny_hf_qwen2, "int2")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("mine")
    with pytest.raises(QwenkitError, match="not an ONNX export"):
        export_onnx(tiny_hf_qwen2, "fp32", out=tmp_path / "full")


def test_engine_choice(tiny_onnx_qwen2, tiny_qwen2, tmp_path):
    with pytest.raises(QwenkitError, match="--engine onnx"):
        qwenkit.load(str(tiny_onnx_qwen2), engine="transformers", progress=False)
    with pytest.raises(QwenkitError, match="precision it was exported at"):
        qwenkit.load(str(tiny_onnx_qwen2), dtype="bf16", progress=False)
    with pytest.raises(ModelLoadError, match=r"genai_config\.json"):
        OnnxEngine(tmp_path)


def _qwenkit(*args: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-c", "from qwenkit.cli import main; main()", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600, env={**os.environ, "NO_COLOR": "1"})


def test_cli_export_and_run(tiny_hf_qwen2, tiny_onnx_qwen2, tiny_cache):
    proc = _qwenkit("export", "onnx", "-m", str(tiny_hf_qwen2), "-p", "fp32", "--out", str(tiny_onnx_qwen2))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == str(tiny_onnx_qwen2)
    proc = _qwenkit("run", "hello", "-m", str(tiny_onnx_qwen2), "--json", "-n", "4", "--temperature", "0", "-t", "1")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["usage"]["completion_tokens"] == 4 and result["finish_reason"] == "length"
    for args, message in (
        (("export", "onnx", "-m", str(tiny_hf_qwen2), "-p", "int2"), "unknown precision"),
        (("run", "hi", "-m", str(tiny_onnx_qwen2), "--engine", "llamacpp"), "--engine onnx"),
    ):
        proc = _qwenkit(*args)
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode != 0 and len(lines) == 1 and message in lines[0], proc.stderr


def test_serve_on_onnx_queues_requests_and_constrains_json(app_server, tiny_onnx_qwen2):
    import concurrent.futures as cf

    questions = ["Write a poem about the sea.", "你好", "def fib(n):"]
    server = app_server(tiny_onnx_qwen2, engine="onnx", threads=THREADS)
    client = server.client()

    def ask(q: str) -> str:
        r = client.chat.completions.create(
            model="default", messages=[{"role": "user", "content": q}], max_tokens=8, temperature=0
        )
        assert r.choices[0].finish_reason == "length" and r.usage.completion_tokens == 8
        return r.choices[0].message.content

    solo = [ask(q) for q in questions]
    with cf.ThreadPoolExecutor(len(questions)) as pool:
        assert list(pool.map(ask, questions)) == solo
    schema = {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"]}
    r = client.chat.completions.create(
        model="default",
        messages=[{"role": "user", "content": "json please"}],
        max_tokens=40,
        temperature=0,
        response_format={"type": "json_schema", "json_schema": {"name": "r", "schema": schema}},
    )
    assert isinstance(json.loads(r.choices[0].message.content)["ok"], bool)
    r = client.chat.completions.create(
        model="default",
        messages=[{"role": "user", "content": "hi"}],
        max_tokens=4,
        temperature=1.0,
        n=2,
        logprobs=True,
        top_logprobs=2,
    )
    assert sorted(c.index for c in r.choices) == [0, 1] and r.usage.completion_tokens == 8
    assert all(len(c.logprobs.content) == 4 and len(c.logprobs.content[0].top_logprobs) == 2 for c in r.choices)


# ----- the real model ---------------------------------------------------------------------


@pytest.mark.integration
def test_embedded_model_int4_writes_code(source_gguf):
    """The embedded 0.5B exported to int4 (once, cached) answers a coding prompt with code."""
    pytest.importorskip("torch", reason="exporting needs the transformers extra")
    path = export_onnx(source_gguf, "int4")
    with qwenkit.load(str(path), n_ctx=2048, n_threads=2, progress=False) as model:
        r = model.chat("Write a Python function is_prime(n). Reply with code only.", max_tokens=200, temperature=0)
    assert "def is_prime" in r.content and "return" in r.content
