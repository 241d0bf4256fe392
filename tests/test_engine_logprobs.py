"""Logprobs, prompt logprobs and n > 1 choices at the engine level, on both engines (tiny models).

The same checks run on llama.cpp and transformers: a greedy token is the most likely of its
alternatives, logprobs are a normalised distribution's, prompt logprobs agree with the logprobs
of the same tokens generated, and n choices of one request share one prefill.
"""

from __future__ import annotations

import math
import queue

import pytest

from qwenkit.engines.base import Chunk, SamplingParams

PROMPT = "<|im_start|>user\nName three colours.<|im_end|>\n<|im_start|>assistant\n"


@pytest.fixture(scope="module", params=["llamacpp", "transformers"])
def engine(request):
    if request.param == "llamacpp":
        from qwenkit.engines.llamacpp import LlamaCppEngine, LlamaCppSettings

        eng = LlamaCppEngine(
            request.getfixturevalue("tiny_qwen2"), LlamaCppSettings(n_ctx=512, n_threads=2, n_parallel=4)
        )
    else:
        from qwenkit.engines.transformers import TransformersEngine, TransformersSettings

        eng = TransformersEngine(
            request.getfixturevalue("tiny_hf_qwen2"), TransformersSettings(n_ctx=512, n_parallel=4, n_threads=2)
        )
    yield eng
    eng.close()


def run(engine, params: SamplingParams, n: int = 1, prompt: str = PROMPT) -> dict[int, list[Chunk]]:
    """Every choice's chunks, by index (bounded: each choice ends with one final chunk)."""
    got: queue.Queue[Chunk] = queue.Queue()
    engine.submit(engine.tokenize(prompt), params, got.put, n=n)
    chunks: dict[int, list[Chunk]] = {i: [] for i in range(n)}
    finished = 0
    for _ in range(n * (params.max_tokens + 2)):
        chunk = got.get(timeout=120)
        chunks[chunk.index].append(chunk)
        finished += chunk.finish_reason is not None
        if finished == n:
            break
    assert finished == n
    return chunks


def test_greedy_token_is_the_most_likely(engine):
    chunks = run(engine, SamplingParams(max_tokens=6, temperature=0, logprobs=5))[0]
    logprobs = [lp for c in chunks for lp in c.logprobs or []]
    assert [lp.token for lp in logprobs] == [t for c in chunks for t in c.token_ids]
    for lp in logprobs:
        assert len(lp.top) == 5
        assert lp.top[0][0] == lp.token and lp.logprob == pytest.approx(lp.top[0][1], abs=1e-5)
        assert [v for _, v in lp.top] == sorted((v for _, v in lp.top), reverse=True)
        assert all(v <= 0 for _, v in lp.top)
        assert sum(math.exp(v) for _, v in lp.top) <= 1 + 1e-4


def test_no_logprobs_unless_asked(engine):
    chunks = run(engine, SamplingParams(max_tokens=3, temperature=0))[0]
    assert all(c.logprobs is None and c.prompt_logprobs is None for c in chunks)


def test_sampled_tokens_have_their_own_logprob(engine):
    chunks = run(engine, SamplingParams(max_tokens=8, temperature=1.0, seed=3, logprobs=0))[0]
    logprobs = [lp for c in chunks for lp in c.logprobs or []]
    assert [lp.token for lp in logprobs] == [t for c in chunks for t in c.token_ids]
    assert all(lp.top == () and lp.logprob <= 0 for lp in logprobs)


def test_prompt_logprobs_score_the_prompt(engine):
    greedy = run(engine, SamplingParams(max_tokens=4, temperature=0, logprobs=2))[0]
    generated = [t for c in greedy for t in c.token_ids]
    sampled = [lp for c in greedy for lp in c.logprobs]
    # the prompt followed by the greedy continuation, scored as a prompt
    ids = engine.tokenize(PROMPT) + generated[:3]
    got: queue.Queue[Chunk] = queue.Queue()
    engine.submit(ids, SamplingParams(max_tokens=1, temperature=0, prompt_logprobs=2), got.put)
    first = got.get(timeout=120)
    scored = first.prompt_logprobs
    assert scored is not None and len(scored) == len(ids) and scored[0] is None
    assert [lp.token for lp in scored[1:]] == ids[1:]
    tail = scored[-3:]
    for mine, theirs in zip(tail, sampled[:3], strict=True):
        assert mine.token == theirs.token
        assert mine.logprob == pytest.approx(theirs.logprob, abs=2e-3)
        assert [t for t, _ in mine.top] == [t for t, _ in theirs.top]
    while first.finish_reason is None:
        first = got.get(timeout=120)
        assert first.prompt_logprobs is None


def test_n_choices_share_the_prompt(engine):
    before = engine.stats().prompt_tokens
    chunks = run(engine, SamplingParams(max_tokens=12, temperature=1.5, seed=None), n=3)
    texts = {i: [t for c in cs for t in c.token_ids] for i, cs in chunks.items()}
    assert all(len(t) >= 1 for t in texts.values())
    assert len({tuple(t) for t in texts.values()}) > 1  # sampled separately (12 hot tokens from 150k)
    assert all(cs[-1].finish_reason is not None for cs in chunks.values())
    computed = engine.stats().prompt_tokens - before
    prompt = len(engine.tokenize(PROMPT))
    if engine.name == "transformers":  # one prefill, repeated rows
        assert computed == prompt
    else:  # the other choices copy the first's cache and decode only its last token again
        assert engine.stats().prefix_hit_tokens >= 2 * (prompt - 1)


def test_n_greedy_choices_agree(engine):
    chunks = run(engine, SamplingParams(max_tokens=6, temperature=0), n=2)
    assert [t for c in chunks[0] for t in c.token_ids] == [t for c in chunks[1] for t in c.token_ids]


def test_n_beyond_the_engine_is_refused(engine):
    from qwenkit.errors import QwenkitError

    with pytest.raises(QwenkitError, match="n=9"):
        engine.submit(engine.tokenize(PROMPT), SamplingParams(max_tokens=2), lambda c: None, n=9)


def test_logprobs_are_bounded():
    with pytest.raises(ValueError, match="logprobs"):
        SamplingParams(logprobs=21)
