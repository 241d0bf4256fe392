"""The transformers engine: protocol semantics on tiny random Qwen2/Qwen3 checkpoints.

Greedy output of a random model is a deterministic, meaningless token sequence, so any mixing
of sequences in the batched cache (left padding, merging, holes from forced tokens) shows at
once as a difference from the request's solo output.
"""

from __future__ import annotations

import os
import queue
import threading
import time

import pytest

pytest.importorskip("torch", reason="the transformers extra is not installed")
pytest.importorskip("transformers", reason="the transformers extra is not installed")

import engine_helpers
import torch
from engine_helpers import GREEDY, ForceAfter, HoldAfter, check_stream_shape, ids_of, run, text_of, wait_until

import qwenkit
from qwenkit.engines.base import Chunk, Engine, QueueFull, SamplingParams
from qwenkit.engines.transformers import TransformersEngine, TransformersSettings
from qwenkit.errors import BadRequest, ModelLoadError, QwenkitError

IM_END, ENDOFTEXT, THINK_OPEN, THINK_CLOSE = 151645, 151643, 151667, 151668
# torch's multi-threaded matmuls collapse on an oversubscribed CI machine; one thread is steady
THREADS = int(os.environ.get("QWENKIT_TEST_TORCH_THREADS", "1"))
PROMPTS = [
    *engine_helpers.PROMPTS,
    "<|im_start|>system\nYou are terse.<|im_end|>\n"
    "<|im_start|>user\nList three colours and explain why each matters to painters.<|im_end|>\n"
    "<|im_start|>assistant\n",
]


@pytest.fixture(scope="module")
def q2(tiny_hf_qwen2):
    engine = TransformersEngine(tiny_hf_qwen2, TransformersSettings(n_threads=THREADS, n_ctx=512, n_parallel=4))
    yield engine
    engine.close()


@pytest.fixture(scope="module")
def q3(tiny_hf_qwen3):
    engine = TransformersEngine(tiny_hf_qwen3, TransformersSettings(n_threads=THREADS, n_ctx=512, n_parallel=4))
    yield engine
    engine.close()


@pytest.fixture(scope="module")
def solo(q2):
    """Each prompt's greedy output run alone (the reference for batched runs)."""
    return {p: ids_of(run(q2, p, max_tokens=12, **GREEDY)) for p in PROMPTS}


# ----- the protocol -----------------------------------------------------------------------


def test_engine_protocol_and_metadata(q2, q3):
    for engine, arch in ((q2, "qwen2"), (q3, "qwen3")):
        assert isinstance(engine, Engine)
        assert engine.name == "transformers"
        assert engine.architecture() == arch
        assert {IM_END, ENDOFTEXT} <= engine.eos_token_ids()
        assert "<|im_start|>" in engine.chat_template()
        assert engine.n_ctx == 512
    assert "enable_thinking" in q3.chat_template()


def test_tokenize_special_and_plain(q2, q3):
    text = "<|im_start|>user\nhi<|im_end|>"
    assert q2.tokenize(text)[0] == 151644 and q2.tokenize(text)[-1] == IM_END
    plain = q2.tokenize(text, special=False)
    assert 151644 not in plain and IM_END not in plain
    assert q2.detokenize(plain) == text
    # Qwen3's <think> tags are single tokens whether or not special tokens are parsed
    for special in (True, False):
        assert q3.tokenize("<think>\n</think>", special=special) == [THINK_OPEN, 198, THINK_CLOSE]
    # no BOS is added, and text survives a round trip
    for s in ("Hello", "你好，世界 🎉", "def f(x):\n\treturn x"):
        assert q2.detokenize(q2.tokenize(s)) == s
        assert q2.tokenize(s)[0] != ENDOFTEXT


def test_greedy_is_deterministic_and_streams_text(q2):
    a = run(q2, PROMPTS[0], max_tokens=16, **GREEDY)
    b = run(q2, PROMPTS[0], max_tokens=16, **GREEDY)
    check_stream_shape(a)
    assert ids_of(a) == ids_of(b)
    assert a[-1].finish_reason == "length" and len(ids_of(a)) == 16
    assert text_of(a) == q2.detokenize(ids_of(a))
    assert all(len(c.token_ids) == 1 for c in a), "one chunk per token"


def test_samplers_that_reduce_to_greedy(q2, solo):
    ref = solo[PROMPTS[3]]
    assert ids_of(run(q2, PROMPTS[3], max_tokens=12, temperature=0.8, top_k=1, seed=1)) == ref
    assert ids_of(run(q2, PROMPTS[3], max_tokens=12, temperature=0.8, min_p=1.0, seed=2)) == ref


def test_penalties_forbid_repeats(q2):
    # a random model with tied-off penalties repeats itself; a huge presence penalty forbids it
    ids = ids_of(run(q2, PROMPTS[0], max_tokens=40, presence_penalty=1000.0, **GREEDY))
    assert len(set(ids)) == len(ids)
    ids = ids_of(run(q2, PROMPTS[0], max_tokens=40, repetition_penalty=1e9, **GREEDY))
    assert len(set(ids)) == len(ids)


def _collect(engine, prompt, out, key, controller=None, **params):
    out[key] = ids_of(run(engine, prompt, controller, **params))


def test_concurrent_requests_match_their_solo_output(q2, solo):
    """Requests joining a running batch (merged caches, different lengths) decode as if alone."""
    out: dict[str, list[int]] = {}
    hold = HoldAfter(2)  # the second request holds the step loop once it decodes: the later ones queue meanwhile
    controllers = [None, hold] + [None] * (len(PROMPTS) - 2)
    threads = [
        threading.Thread(target=_collect, args=(q2, p, out, p, c), kwargs=dict(max_tokens=12, **GREEDY))
        for p, c in zip(PROMPTS, controllers, strict=True)
    ]
    for t in threads[:2]:
        t.start()
    assert hold.decoding.wait(120)
    for t in threads[2:]:
        t.start()
    joined = wait_until(lambda: q2.stats().waiting == len(PROMPTS) - 2)
    hold.release.set()  # the later ones join a batch already decoding
    for t in threads:
        t.join(timeout=300)
    assert joined, "the later requests never queued behind the running batch"
    assert out == solo


def test_forced_tokens_in_a_batch_leave_the_others_alone(q2, solo):
    out: dict[str, list[int]] = {}
    forced = q2.tokenize(" forced words here")
    threads = [
        threading.Thread(
            target=_collect,
            args=(q2, PROMPTS[0], out, "forced", ForceAfter(2, forced)),
            kwargs=dict(max_tokens=12, **GREEDY),
        ),
        *[
            threading.Thread(target=_collect, args=(q2, p, out, p), kwargs=dict(max_tokens=12, **GREEDY))
            for p in PROMPTS[1:]
        ],
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    for p in PROMPTS[1:]:
        assert out[p] == solo[p]
    assert out["forced"][:2] == solo[PROMPTS[0]][:2] and out["forced"][2 : 2 + len(forced)] == forced


def test_queue_bound_and_stats(tiny_hf_qwen2):
    engine = TransformersEngine(
        tiny_hf_qwen2, TransformersSettings(n_threads=THREADS, n_ctx=2048, n_parallel=1, max_waiting=1)
    )
    try:
        got: queue.Queue[Chunk] = queue.Queue()
        params = SamplingParams(max_tokens=2000, **GREEDY)
        prompt = engine.tokenize("hello there")
        first = engine.submit(prompt, params, got.put)
        got.get(timeout=60)  # running
        second = engine.submit(prompt, params, lambda c: None)
        stats = engine.stats()
        assert stats.running == 1 and stats.waiting == 1 and stats.prompt_tokens >= len(prompt)
        with pytest.raises(QueueFull):
            engine.submit(prompt, params, lambda c: None)
        first.cancel()
        second.cancel()
    finally:
        engine.close()


def test_a_grammar_names_the_engines_that_take_one(q2):
    # the other bad requests are the engine contract's (tests/test_engine_contract.py)
    with pytest.raises(BadRequest, match=r"llama\.cpp engine"):
        q2.submit([1, 2], SamplingParams(grammar='root ::= "a"'), lambda c: None)


def test_qwen3_generates_and_stops(q3):
    chunks = run(q3, "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n<think>\n", max_tokens=8, **GREEDY)
    check_stream_shape(chunks)
    assert len(ids_of(chunks)) == 8


# ----- loading options --------------------------------------------------------------------


def test_bf16_dtype(tiny_hf_qwen2):
    engine = TransformersEngine(tiny_hf_qwen2, TransformersSettings(n_threads=THREADS, dtype="bf16", n_ctx=128))
    try:
        assert engine.model.dtype == torch.bfloat16
        chunks = run(engine, PROMPTS[0], max_tokens=4, **GREEDY)
        assert len(ids_of(chunks)) == 4
    finally:
        engine.close()


def test_auto_dtype_on_cpu_is_fp32(q2):
    if torch.cuda.is_available():
        pytest.skip("on a GPU, auto keeps the checkpoint's dtype")
    assert q2.model.dtype == torch.float32


def test_bad_settings_are_clear():
    with pytest.raises(QwenkitError, match="unknown dtype"):
        TransformersSettings(dtype="fp8")
    with pytest.raises(QwenkitError, match="quantization"):
        TransformersSettings(quantization="3bit")


def test_bad_path(tmp_path):
    with pytest.raises(ModelLoadError, match=r"config\.json"):
        TransformersEngine(tmp_path)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error shown when there is no CUDA")
@pytest.mark.parametrize("bits", ["8bit", "4bit"])
def test_quantization_without_cuda_is_a_clear_error(tiny_hf_qwen2, bits):
    with pytest.raises(QwenkitError, match="CUDA"):
        TransformersEngine(tiny_hf_qwen2, TransformersSettings(n_threads=THREADS, quantization=bits))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="bitsandbytes quantization needs a CUDA GPU")
@pytest.mark.parametrize("bits", ["8bit", "4bit"])
def test_quantized_load_on_cuda(tiny_hf_qwen2, bits):
    pytest.importorskip("bitsandbytes", reason="bitsandbytes is not installed")
    engine = TransformersEngine(tiny_hf_qwen2, TransformersSettings(n_threads=THREADS, quantization=bits, n_ctx=128))
    try:
        assert len(ids_of(run(engine, PROMPTS[0], max_tokens=4, **GREEDY))) == 4
    finally:
        engine.close()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_fp16_on_cuda_matches_its_own_batched_output(tiny_hf_qwen2):
    engine = TransformersEngine(tiny_hf_qwen2, TransformersSettings(n_threads=THREADS, dtype="fp16", n_ctx=256))
    try:
        assert engine.device.type == "cuda"
        assert len(ids_of(run(engine, PROMPTS[0], max_tokens=8, **GREEDY))) == 8
    finally:
        engine.close()


# ----- engine choice through qwenkit.load -------------------------------------------------


def test_load_picks_transformers_for_a_checkpoint_directory(tiny_hf_qwen2):
    with qwenkit.load(str(tiny_hf_qwen2), n_ctx=256, n_threads=THREADS, progress=False) as model:
        assert model.engine.name == "transformers"
        assert model.architecture == "qwen2"
        r = model.chat("hello", max_tokens=6, temperature=0)
        assert r.usage.completion_tokens == 6 and r.finish_reason == "length"


def test_engine_choice_errors(tiny_hf_qwen2, tiny_qwen2):
    with pytest.raises(QwenkitError, match=r"needs a \.gguf"):
        qwenkit.load(str(tiny_hf_qwen2), engine="llamacpp", progress=False)
    with pytest.raises(QwenkitError, match="unknown engine"):
        qwenkit.load(str(tiny_hf_qwen2), engine="vllm-ish", progress=False)
    with pytest.raises(QwenkitError, match="transformers engine"):
        qwenkit.load(str(tiny_qwen2), engine="llamacpp", quantization="4bit", progress=False)


def test_thinking_budget_on_transformers(tiny_hf_qwen3):
    """The thinking budget is a StepController: it works on this engine as on llama.cpp."""
    from qwenkit.chat.budget import GRACE_TOKENS

    with qwenkit.load(str(tiny_hf_qwen3), n_ctx=1024, n_threads=THREADS, progress=False) as model:
        budget = 16
        r = model.chat("Solve 2+2.", max_tokens=budget + 120, thinking_budget=budget, seed=7)
        assert 0 < r.usage.reasoning_tokens <= budget + GRACE_TOKENS + len(model._closing) + 1
        assert "Considering the limited time" in r.reasoning
        # the answer took the rest of max_tokens (a random model never ends its turn), outside the reasoning
        assert r.finish_reason == "length" and r.usage.completion_tokens == budget + 120
        assert r.content.strip() and "</think>" not in r.content and "</think>" not in r.reasoning


# ----- the command line and the server on this engine --------------------------------------


def _qwenkit(*args: str, timeout: float = 600):
    import subprocess
    import sys
    from pathlib import Path

    exe = Path(sys.executable).with_name("qwenkit")
    if not exe.is_file():
        pytest.skip("the qwenkit command is not installed")
    env = {**os.environ, "NO_COLOR": "1"}
    proc = subprocess.run([str(exe), *args], capture_output=True, timeout=timeout, env=env)
    return proc.returncode, proc.stdout.decode(), proc.stderr.decode()


def test_cli_run_on_transformers(tiny_hf_qwen2):
    import json

    code, out, err = _qwenkit(
        "run",
        "hello",
        "-m",
        str(tiny_hf_qwen2),
        "--engine",
        "transformers",
        "--json",
        "-n",
        "4",
        "--temperature",
        "0",
        "-t",
        str(THREADS),
    )
    assert code == 0, err
    result = json.loads(out)
    assert result["usage"]["completion_tokens"] == 4 and result["finish_reason"] == "length"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--engine", "llamacpp"), "needs a .gguf"),
        (("--engine", "nope"), "unknown engine"),
        (("--dtype", "fp8"), "unknown dtype"),
        *([] if torch.cuda.is_available() else [(("--quantization", "4bit"), "CUDA")]),
    ],
)
def test_cli_engine_options_fail_in_one_line(tiny_hf_qwen2, args, message):
    code, out, err = _qwenkit("run", "hello", "-m", str(tiny_hf_qwen2), *args, "-n", "2")
    assert code != 0 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0], err


def test_serve_on_transformers_keeps_concurrent_requests_apart(app_server, tiny_hf_qwen2):
    """`qwenkit serve --engine transformers`: concurrent requests, batched, each as if alone."""
    import concurrent.futures as cf

    from serve_helpers import sse_events

    questions = ["Write a poem about the sea.", "你好", "List three colours.", "def fib(n):", "Why is the sky blue?"]
    server = app_server(tiny_hf_qwen2, engine="transformers", parallel=4, threads=THREADS)
    client = server.client()

    def ask(q: str) -> str:
        r = client.chat.completions.create(
            model="default", messages=[{"role": "user", "content": q}], max_tokens=10, temperature=0
        )
        assert r.choices[0].finish_reason == "length" and r.usage.completion_tokens == 10
        return r.choices[0].message.content

    solo = [ask(q) for q in questions]
    with cf.ThreadPoolExecutor(len(questions)) as pool:
        together = list(pool.map(ask, questions))
    assert together == solo
    with server.http() as h:  # streaming works the same
        body = {
            "messages": [{"role": "user", "content": questions[0]}],
            "max_tokens": 10,
            "temperature": 0,
            "stream": True,
        }
        with h.stream("POST", "/v1/chat/completions", json=body) as response:
            text = "".join(
                e["choices"][0]["delta"].get("content") or ""
                for e in sse_events(response)
                if isinstance(e, dict) and e["choices"]
            )
    assert text == solo[0]
    with server.http() as h:  # grammars are llama.cpp's: a clear 400, not a failure mid-way
        body = {
            "messages": [{"role": "user", "content": "hi"}],
            "max_tokens": 10,
            "response_format": {"type": "json_object"},
        }
        r = h.post("/v1/chat/completions", json=body)
        assert r.status_code == 400 and "llama.cpp" in r.json()["error"]["message"]


# ----- the prefix cache -------------------------------------------------------------------

FOLLOW_UP = "<|im_end|>\n<|im_start|>user\nAnd why is that so, in a few more words?<|im_end|>\n<|im_start|>assistant\n"


@pytest.fixture(scope="module")
def uncached(tiny_hf_qwen2, tiny_hf_qwen3):
    """The same checkpoints with no prefix cache: the reference outputs."""
    engines = {
        name: TransformersEngine(path, TransformersSettings(n_threads=THREADS, n_ctx=512, prefix_cache_tokens=0))
        for name, path in (("q2", tiny_hf_qwen2), ("q3", tiny_hf_qwen3))
    }
    yield engines
    for engine in engines.values():
        engine.close()


def _conversation(engine, turns=3, **params):
    """Follow-up turns, each prompt the previous prompt + its answer + a new user message:
    (prompt, answer ids, cached prompt tokens) per turn."""
    prompt = engine.tokenize(PROMPTS[3])
    out = []
    for _ in range(turns):
        chunks = run(engine, prompt, max_tokens=10, **GREEDY, **params)
        out.append((list(prompt), ids_of(chunks), chunks[-1].cached_prompt_tokens))
        prompt = prompt + ids_of(chunks) + engine.tokenize(FOLLOW_UP)
    return out


@pytest.mark.parametrize("name", ["q2", "q3"])
def test_follow_up_turns_reuse_the_prefix_and_match_uncached_output(name, q2, q3, uncached):
    engine = {"q2": q2, "q3": q3}[name]
    hits = engine.stats().prefix_hit_tokens
    turns = _conversation(engine)
    reference = _conversation(uncached[name])
    assert [(p, a) for p, a, _ in turns] == [(p, a) for p, a, _ in reference]
    assert all(cached == 0 for _, _, cached in reference)
    for prompt, _, cached in turns[1:]:
        assert cached >= len(prompt) - len(engine.tokenize(FOLLOW_UP)) - 1  # the last turn, its answer
    assert engine.stats().prefix_hit_tokens - hits >= sum(cached for _, _, cached in turns[1:])
    # the same prompt again: all of it but the last token comes from the cache, same tokens
    prompt, answer, _ = turns[-1]
    again = run(engine, prompt, max_tokens=10, **GREEDY)
    assert ids_of(again) == answer and again[-1].cached_prompt_tokens == len(prompt) - 1


def test_cache_hits_batch_with_misses_and_n_choices(q2, uncached, solo):
    """A prefilled prefix (left-padded beside a row without one) and n>1 rows copied from it."""
    prompt = q2.tokenize(PROMPTS[3])
    first = ids_of(run(q2, prompt, max_tokens=10, **GREEDY))
    follow = prompt + first + q2.tokenize(FOLLOW_UP)
    expected = ids_of(run(uncached["q2"], follow, max_tokens=12, **GREEDY))
    got: dict[str, queue.Queue[Chunk]] = {"follow": queue.Queue(), "fresh": queue.Queue()}
    with q2.worker._cv:  # admitted together: one prefill of a cached and an uncached row
        q2.submit(follow, SamplingParams(max_tokens=12, **GREEDY), got["follow"].put, n=2)
        q2.submit(q2.tokenize(PROMPTS[2]), SamplingParams(max_tokens=12, **GREEDY), got["fresh"].put)
    results: dict[str, list[Chunk]] = {"follow": [], "fresh": []}
    for key, out in got.items():
        finished = 0
        while finished < (2 if key == "follow" else 1):
            chunk = out.get(timeout=120)
            results[key].append(chunk)
            finished += chunk.finish_reason is not None
    choices: dict[int, list[int]] = {}
    for chunk in results["follow"]:
        choices.setdefault(chunk.index, []).extend(chunk.token_ids)
    assert choices == {0: expected, 1: expected}
    assert all(c.cached_prompt_tokens >= len(prompt) for c in results["follow"] if c.finish_reason)
    assert ids_of(results["fresh"]) == solo[PROMPTS[2]]


def test_prefix_cache_stays_within_its_bound(tiny_hf_qwen2):
    engine = TransformersEngine(
        tiny_hf_qwen2, TransformersSettings(n_threads=THREADS, n_ctx=512, n_parallel=2, prefix_cache_tokens=60)
    )
    try:
        cache = engine.worker.prefix
        for prompt in PROMPTS:
            run(engine, prompt, max_tokens=8, **GREEDY)
            for _ in range(1000):  # the finished row is stored after its last chunk is sent
                if not engine.worker.rows:
                    break
                time.sleep(0.01)
            assert 0 < cache.tokens <= 60
            per_token = 2 * engine.model.config.num_hidden_layers * engine.model.config.num_key_value_heads
            head_dim = engine.model.config.hidden_size // engine.model.config.num_attention_heads
            assert cache.nbytes == cache.tokens * per_token * getattr(engine.model.config, "head_dim", head_dim) * 4
        last = cache.entries[-1].keys  # the most recent sequence is kept; older ones went first
        assert list(last[: len(engine.tokenize(PROMPTS[3]))]) == engine.tokenize(PROMPTS[3])
    finally:
        engine.close()
    with pytest.raises(QwenkitError, match="prefix_cache_tokens"):
        TransformersSettings(prefix_cache_tokens=-1)


def test_load_sizes_or_turns_off_the_prefix_cache(tiny_hf_qwen2, tiny_qwen2):
    """`qwenkit.load(prefix_cache_tokens=...)`: a repeated prompt reuses the cache by default, not at 0;
    other engines refuse the keyword."""
    messages = [{"role": "user", "content": "List three colours and explain why each matters to painters."}]
    for tokens, reused in ((None, True), (0, False)):
        model = qwenkit.load(
            str(tiny_hf_qwen2), engine="transformers", n_threads=THREADS, progress=False, prefix_cache_tokens=tokens
        )
        try:
            model.chat(messages, max_tokens=2, temperature=0)
            again = model.chat(messages, max_tokens=2, temperature=0)
        finally:
            model.close()
        assert (again.usage.cached_prompt_tokens > 0) is reused, tokens
    with pytest.raises(QwenkitError, match="prefix cache, not llamacpp's"):
        qwenkit.load(str(tiny_qwen2), progress=False, prefix_cache_tokens=0)
