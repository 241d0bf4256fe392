"""The engine contract: the same checks on every engine, on tiny random-weight Qwen2 models.

Parametrized over llama.cpp (tiny GGUF), transformers (tiny checkpoint), onnx (the checkpoint
exported at fp32) and vLLM (a tiny checkpoint with head_dim 64, the smallest vLLM's CPU attention
takes). vLLM lives in an environment of its own: here its tests skip, saying how to run them
(`make vllm-env && make test-vllm`). What only one engine does (prefix cache slots, batched
cache rows, the ONNX queue) stays in that engine's own test file.

Greedy output of a random model is a deterministic but meaningless token sequence, which makes
any mixing of sequences, dropped token or mis-fed forced token visible at once.
"""

from __future__ import annotations

import math
import os
import queue
import threading
import time

import pytest
from engine_helpers import (
    GREEDY,
    IM_END,
    PROMPTS,
    ForceAfter,
    check_stream_shape,
    choices,
    ids_of,
    run,
    text_of,
)

from qwenkit.engines.base import Chunk, Engine, ImageInput, SamplingParams
from qwenkit.errors import BadRequest, QwenkitError

THREADS = int(os.environ.get("QWENKIT_TEST_TORCH_THREADS", "1"))
N_CTX, PARALLEL = 512, 4
ENGINES = ["llamacpp", "transformers", "onnx", "vllm"]
GRAMMAR_ENGINES = {"llamacpp", "onnx", "vllm"}  # transformers refuses grammars (BadRequest)
VLLM_MISSING = (
    "vLLM is not installed here: it runs in an environment of its own (its pins conflict with "
    "qwenkit's extras); `make vllm-env && make test-vllm` runs these tests there (README, Scaling out)"
)


def _load(name: str, request: pytest.FixtureRequest) -> Engine:
    if name == "llamacpp":
        from qwenkit.engines.llamacpp import LlamaCppEngine, LlamaCppSettings

        path = request.getfixturevalue("tiny_qwen2")
        return LlamaCppEngine(path, LlamaCppSettings(n_ctx=N_CTX, n_threads=2, n_parallel=PARALLEL))
    if name == "transformers":
        pytest.importorskip("transformers", reason="the transformers extra is not installed")
        from qwenkit.engines.transformers import TransformersEngine, TransformersSettings

        path = request.getfixturevalue("tiny_hf_qwen2")
        return TransformersEngine(path, TransformersSettings(n_ctx=N_CTX, n_threads=THREADS, n_parallel=PARALLEL))
    if name == "onnx":
        pytest.importorskip("onnxruntime_genai", reason="the onnx extra is not installed")
        from qwenkit.engines.onnx import OnnxEngine, OnnxSettings

        path = request.getfixturevalue("tiny_onnx_qwen2")
        return OnnxEngine(path, OnnxSettings(n_ctx=N_CTX, n_threads=THREADS))
    pytest.importorskip("vllm", reason=VLLM_MISSING)
    from qwenkit.engines.vllm import VllmEngine, VllmSettings
    from qwenkit.testing.tiny_hf import tiny_hf

    for key, value in (("VLLM_CPU_KVCACHE_SPACE", "1"), ("VLLM_CPU_OMP_THREADS_BIND", "0"), ("HF_HUB_OFFLINE", "1")):
        os.environ.setdefault(key, value)
    source, cache = request.getfixturevalue("source_gguf"), request.getfixturevalue("tiny_cache")
    path = tiny_hf("qwen2", cache, source_gguf=source, n_embd=128, n_head=2, n_head_kv=1)
    return VllmEngine(path, VllmSettings(n_ctx=N_CTX, n_parallel=PARALLEL))


@pytest.fixture(scope="module", params=ENGINES)
def engine(request):
    eng = _load(request.param, request)
    yield eng
    eng.close()


def wait_idle(engine) -> None:
    deadline = time.monotonic() + 30
    while engine.stats().running and time.monotonic() < deadline:
        time.sleep(0.05)
    assert engine.stats().running == 0


# ----- metadata ----------------------------------------------------------------------------


def test_protocol_and_metadata(engine):
    assert isinstance(engine, Engine)
    assert engine.architecture() == "qwen2"
    assert {IM_END} <= engine.eos_token_ids()
    assert "<|im_start|>" in engine.chat_template()
    assert engine.n_ctx == N_CTX and engine.n_vocab == 151936
    text = "<|im_start|>user\nhi<|im_end|>"
    assert engine.tokenize(text)[0] == 151644 and engine.tokenize(text)[-1] == IM_END
    assert IM_END not in engine.tokenize(text, special=False)
    for s in ("Hello", "你好，世界 🎉", "def f(x):\n\treturn x"):
        assert engine.detokenize(engine.tokenize(s)) == s
    assert engine.token_bytes(IM_END) == b"<|im_end|>"


# ----- determinism, length, stops ----------------------------------------------------------


def test_greedy_is_deterministic_and_text_matches_tokens(engine):
    a = run(engine, PROMPTS[0], max_tokens=16, **GREEDY)
    b = run(engine, PROMPTS[0], max_tokens=16, **GREEDY)
    check_stream_shape(a)
    assert ids_of(a) == ids_of(b)
    assert text_of(a) == engine.detokenize(ids_of(a))


@pytest.mark.parametrize("max_tokens", [1, 2, 17])
def test_max_tokens_gives_length_with_exactly_that_many_tokens(engine, max_tokens):
    chunks = run(engine, PROMPTS[0], max_tokens=max_tokens, **GREEDY)
    check_stream_shape(chunks)
    assert chunks[-1].finish_reason == "length" and chunks[-1].error is None
    assert len(ids_of(chunks)) == max_tokens


def test_seeded_sampling_is_reproducible(engine):
    params = dict(max_tokens=12, temperature=1.0)
    a = ids_of(run(engine, PROMPTS[1], seed=7, **params))
    assert a == ids_of(run(engine, PROMPTS[1], seed=7, **params))
    assert a != ids_of(run(engine, PROMPTS[1], seed=8, **params))


def test_end_of_generation_token_stops_with_stop(engine):
    chunks = run(engine, PROMPTS[0], max_tokens=20, logit_bias=((IM_END, 100.0),), **GREEDY)
    assert [c.finish_reason for c in chunks] == ["stop"]
    assert chunks[0].token_ids == [IM_END] and chunks[0].text == ""


def test_logit_bias_picks_a_token(engine):
    assert ids_of(run(engine, PROMPTS[1], max_tokens=5, logit_bias=((1234, 100.0),), **GREEDY)) == [1234] * 5


def test_stop_token_ids(engine):
    ref = ids_of(run(engine, PROMPTS[0], max_tokens=12, **GREEDY))
    cut = ref.index(ref[4])
    chunks = run(engine, PROMPTS[0], max_tokens=12, stop_token_ids=(ref[4],), **GREEDY)
    check_stream_shape(chunks)
    assert chunks[-1].finish_reason == "stop"
    assert ids_of(chunks) == ref[: cut + 1]
    assert text_of(chunks) == engine.detokenize(ref[:cut])  # the stop token's text is left out


def test_stop_string_is_cut_and_reported(engine):
    full = text_of(run(engine, PROMPTS[2], max_tokens=24, **GREEDY))
    clean = [i for i in range(4, len(full) - 2) if full[i : i + 2].isprintable() and "\ufffd" not in full[i : i + 2]]
    assert clean, f"no usable stop string in {full!r}"
    stop = full[clean[len(clean) // 2] :][:2]
    chunks = run(engine, PROMPTS[2], max_tokens=24, stop=(stop,), **GREEDY)
    assert chunks[-1].finish_reason == "stop" and chunks[-1].stop_sequence == stop
    assert text_of(chunks) == full[: full.find(stop)]


def test_text_held_for_a_stop_string_is_flushed_at_the_end(engine):
    full = text_of(run(engine, PROMPTS[0], max_tokens=12, **GREEDY))
    stop = full[-2:] + "\x00never"  # the output ends with the start of this stop string
    chunks = run(engine, PROMPTS[0], max_tokens=12, stop=(stop,), **GREEDY)
    assert chunks[-1].finish_reason == "length" and chunks[-1].stop_sequence is None
    assert text_of(chunks) == full


def test_grammar_constrains_the_output(engine):
    grammar = 'root ::= "yes" | "no"'
    if engine.name not in GRAMMAR_ENGINES:
        with pytest.raises(BadRequest):
            run(engine, PROMPTS[0], max_tokens=8, grammar=grammar)
        return
    chunks = run(engine, PROMPTS[0], max_tokens=8, grammar=grammar, temperature=1.0, seed=3)
    assert chunks[-1].finish_reason == "stop" and text_of(chunks) in ("yes", "no")


# ----- forced tokens (a StepController) ----------------------------------------------------


def test_forced_tokens_are_reported_and_fed(engine):
    forced = engine.tokenize(" forced words")
    chunks = run(engine, PROMPTS[0], ForceAfter(3, forced), max_tokens=14, **GREEDY)
    marked = [c for c in chunks if c.forced]
    assert len(marked) == 1 and marked[0].token_ids == forced
    ids = ids_of(chunks)
    assert len(ids) == 14 and chunks[-1].finish_reason == "length"  # forced tokens count
    head = ids[: 3 + len(forced)]
    assert head[3:] == forced
    # the continuation is what the model gives after that prefix (the forced tokens were fed)
    prompt = engine.tokenize(PROMPTS[0]) + head
    assert ids[len(head) :] == ids_of(run(engine, prompt, max_tokens=14 - len(head), **GREEDY))


def test_forced_tokens_respect_max_tokens(engine):
    chunks = run(engine, PROMPTS[0], ForceAfter(2, [100, 101, 102, 103, 104]), max_tokens=4, **GREEDY)
    assert ids_of(chunks)[2:] == [100, 101] and chunks[-1].finish_reason == "length"
    assert [c.forced for c in chunks] == [False, False, True, False]


# ----- logprobs and n choices --------------------------------------------------------------


def test_greedy_token_is_the_most_likely(engine):
    chunks = run(engine, PROMPTS[0], max_tokens=6, logprobs=5, **GREEDY)
    logprobs = [lp for c in chunks for lp in c.logprobs or []]
    assert [lp.token for lp in logprobs] == ids_of(chunks)
    for lp in logprobs:
        assert len(lp.top) == 5
        assert lp.top[0][0] == lp.token or lp.top[0][1] == lp.top[1][1]  # the most likely, or tied with it
        assert lp.logprob == pytest.approx(lp.top[0][1], abs=1e-5)
        assert [v for _, v in lp.top] == sorted((v for _, v in lp.top), reverse=True)
        assert all(v <= 0 for _, v in lp.top)
        assert sum(math.exp(v) for _, v in lp.top) <= 1 + 1e-4


def test_no_logprobs_unless_asked(engine):
    chunks = run(engine, PROMPTS[0], max_tokens=3, **GREEDY)
    assert all(c.logprobs is None and c.prompt_logprobs is None for c in chunks)


def test_sampled_tokens_have_their_own_logprob(engine):
    chunks = run(engine, PROMPTS[0], max_tokens=8, temperature=1.0, seed=3, logprobs=0)
    logprobs = [lp for c in chunks for lp in c.logprobs or []]
    assert [lp.token for lp in logprobs] == ids_of(chunks)
    assert all(lp.top == () and lp.logprob <= 0 for lp in logprobs)


def test_forced_tokens_have_no_logprobs(engine):
    chunks = run(engine, PROMPTS[0], ForceAfter(1, [100, 101]), max_tokens=4, logprobs=1, **GREEDY)
    assert [c.logprobs is None for c in chunks] == [False, True, False]


def test_prompt_logprobs_score_the_prompt(engine):
    greedy = run(engine, PROMPTS[0], max_tokens=4, logprobs=2, **GREEDY)
    sampled = [lp for c in greedy for lp in c.logprobs]
    # the prompt followed by the greedy continuation, scored as a prompt
    ids = engine.tokenize(PROMPTS[0]) + ids_of(greedy)[:3]
    scored = run(engine, ids, max_tokens=2, prompt_logprobs=2, **GREEDY)
    prompt = scored[0].prompt_logprobs
    assert prompt is not None and len(prompt) == len(ids) and prompt[0] is None
    assert [lp.token for lp in prompt[1:]] == ids[1:]
    for mine, theirs in zip(prompt[-3:], sampled[:3], strict=True):
        assert mine.token == theirs.token
        if engine.name == "vllm":  # bf16 on the CPU: a prefill and a decode step round differently
            assert mine.logprob == pytest.approx(theirs.logprob, abs=0.05)
        else:
            assert mine.logprob == pytest.approx(theirs.logprob, abs=2e-3)
            assert [t for t, _ in mine.top] == [t for t, _ in theirs.top]
    assert all(c.prompt_logprobs is None for c in scored[1:])


def test_n_sampled_choices_differ(engine):
    sampled = choices(engine, PROMPTS[1], n=3, max_tokens=8, temperature=1.5)
    tokens = {i: ids_of(cs) for i, cs in sampled.items()}
    assert all(tokens.values())
    assert len({tuple(t) for t in tokens.values()}) > 1  # sampled separately (8 hot tokens from 150k)


def test_n_choices_share_one_prefill(engine):
    before = engine.stats()
    prompt = len(engine.tokenize(PROMPTS[0]))
    choices(engine, PROMPTS[0], n=3, max_tokens=4, temperature=1.0)
    after = engine.stats()
    if engine.name == "llamacpp":  # the other choices copy the first's cache: only its last token again
        assert after.prefix_hit_tokens - before.prefix_hit_tokens >= 2 * (prompt - 1)
    else:  # one prefill (transformers: repeated rows; vLLM: its prefix cache), counted once
        assert after.prompt_tokens - before.prompt_tokens == prompt


def test_n_greedy_choices_agree(engine):
    greedy = choices(engine, PROMPTS[1], n=2, max_tokens=4, **GREEDY)
    assert ids_of(greedy[0]) == ids_of(greedy[1]) == ids_of(run(engine, PROMPTS[1], max_tokens=4, **GREEDY))


# ----- bad requests, cancellation, stats, concurrency --------------------------------------


def test_bad_requests_are_refused_up_front(engine):
    emit = lambda c: None  # noqa: E731
    with pytest.raises(BadRequest, match="empty"):
        engine.submit([], SamplingParams(), emit)
    with pytest.raises(BadRequest, match="context"):
        engine.submit([1] * (N_CTX + 10), SamplingParams(), emit)
    with pytest.raises(BadRequest, match="context"):
        engine.submit([1] * N_CTX, SamplingParams(), emit)
    with pytest.raises(BadRequest, match="outside the vocabulary"):
        engine.submit([1, 10**7], SamplingParams(), emit)
    with pytest.raises(BadRequest, match="outside the vocabulary"):
        engine.submit([1, 2], SamplingParams(logit_bias=((10**7, 1.0),)), emit)
    with pytest.raises(BadRequest, match="LoRA"):
        engine.submit([1, 2], SamplingParams(), emit, adapters=(("nope", 1.0),))
    assert engine.vision() is False  # these are text models: an image is refused, naming why
    image = ImageInput(b"\x89PNG", "0" * 64, 1, 1)
    with pytest.raises(BadRequest, match="text only"):
        engine.submit(
            engine.tokenize("<|vision_start|><|image_pad|><|vision_end|>"), SamplingParams(), emit, images=[image]
        )
    # the engine still serves requests afterwards
    assert run(engine, PROMPTS[1], max_tokens=2)[-1].finish_reason == "length"


def test_cancel_aborts_and_the_engine_goes_on(engine):
    reference = ids_of(run(engine, PROMPTS[1], max_tokens=3, **GREEDY))
    chunks: queue.Queue[Chunk] = queue.Queue()
    handle = engine.submit(engine.tokenize(PROMPTS[0]), SamplingParams(max_tokens=400, **GREEDY), chunks.put)
    assert chunks.get(timeout=120).finish_reason is None
    handle.cancel()
    for _ in range(402):
        last = chunks.get(timeout=120)
        if last.finish_reason:
            break
    assert last.finish_reason == "abort" and last.error is None
    wait_idle(engine)
    assert ids_of(run(engine, PROMPTS[1], max_tokens=3, **GREEDY)) == reference


def test_cancel_before_it_runs_still_ends_the_stream(engine):
    chunks: queue.Queue[Chunk] = queue.Queue()
    handle = engine.submit(engine.tokenize(PROMPTS[2]), SamplingParams(max_tokens=400), chunks.put)
    handle.cancel()
    seen = []
    for _ in range(402):
        seen.append(chunks.get(timeout=120))
        if seen[-1].finish_reason is not None:
            break
    assert seen[-1].finish_reason == "abort" and len(ids_of(seen)) < 400
    wait_idle(engine)


def test_closing_the_iterator_cancels(engine):
    stream = engine.generate(engine.tokenize(PROMPTS[0]), SamplingParams(max_tokens=400, **GREEDY))
    assert next(stream).finish_reason is None
    stream.close()
    wait_idle(engine)


def test_stats_count_prompts_and_settle(engine):
    before = engine.stats().prompt_tokens
    prompt = engine.tokenize(PROMPTS[2])
    run(engine, prompt, max_tokens=2, **GREEDY)
    stats = engine.stats()
    assert stats.prompt_tokens - before == len(prompt)
    assert stats.running == 0 and stats.waiting == 0


def test_concurrent_requests_all_complete(engine):
    out: dict[int, list[Chunk]] = {}

    def one(i: int) -> None:
        out[i] = run(engine, PROMPTS[i % len(PROMPTS)], max_tokens=10, **GREEDY)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert sorted(out) == list(range(6))
    for chunks in out.values():
        check_stream_shape(chunks)
        assert chunks[-1].finish_reason == "length" and len(ids_of(chunks)) == 10
        assert text_of(chunks) == engine.detokenize(ids_of(chunks))
    # the same prompt, run side by side, decodes the same
    assert ids_of(out[0]) == ids_of(out[3])
    wait_idle(engine)


def test_n_beyond_what_the_engine_runs_together_is_refused(engine):
    if engine.name == "onnx":  # one stream: choices run one after another, any n
        pytest.skip("the onnx engine decodes choices one after another, so any n fits")
    with pytest.raises(QwenkitError, match="n=9"):
        engine.submit(engine.tokenize(PROMPTS[0]), SamplingParams(max_tokens=2), lambda c: None, n=9)


def test_logprobs_are_bounded():
    with pytest.raises(ValueError, match="logprobs"):
        SamplingParams(logprobs=21)
