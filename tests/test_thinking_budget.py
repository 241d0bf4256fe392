"""Thinking control on Qwen3: the budget closes reasoning on time, an answer always follows,
usage agrees between streamed and whole responses, and thinking-off works without the flag.

A tiny random Qwen3 never closes `</think>` by itself, so every `</think>` seen here was forced.
The model-level tests run on both engines (llama.cpp on a tiny GGUF, transformers on a tiny
checkpoint built from a `Qwen3Config`).
"""

from __future__ import annotations

import pytest

import qwenkit
from qwenkit.chat.budget import (
    GRACE_TOKENS,
    ThinkingBudget,
    answer_reserve,
    parse_effort_budgets,
    resolve_budget,
)
from qwenkit.errors import BadRequest
from qwenkit.testing import tiny

THINK_OPEN, THINK_CLOSE = 151667, 151668
CLOSING = [1, 2, 3, THINK_CLOSE, 4]


def _controller(budget, max_tokens=10_000, texts=None, starts=True):
    return ThinkingBudget(
        budget=budget,
        max_tokens=max_tokens,
        closing=CLOSING,
        think_open=THINK_OPEN,
        think_close=THINK_CLOSE,
        starts_in_thinking=starts,
        token_text=lambda t: (texts or {}).get(t, "x"),
    )


def _run(controller, tokens):
    """Feed tokens one by one; return (step at which tokens were forced, forced tokens)."""
    generated = []
    for i, t in enumerate(tokens):
        generated.append(t)
        forced = controller.after_token(generated)
        if forced:
            return i + 1, list(forced)
    return None, []


def test_budget_forces_closing_after_grace_when_no_sentence_ends():
    step, forced = _run(_controller(16), [100] * 200)
    assert forced == CLOSING
    assert step == 16 + GRACE_TOKENS


def test_budget_closes_at_the_first_sentence_end_after_the_budget():
    texts = {7: " done."}
    tokens = [100] * 20 + [7] + [100] * 50
    step, forced = _run(_controller(16, texts=texts), tokens)
    assert step == 21 and forced == CLOSING


def test_natural_close_is_left_alone():
    _step, forced = _run(_controller(16), [100] * 5 + [THINK_CLOSE] + [100] * 100)
    assert forced == []


def test_no_thinking_means_nothing_to_govern():
    step, _ = _run(_controller(0, starts=False), [100] * 100)
    assert step is None


def test_model_opening_think_itself_is_governed():
    step, forced = _run(_controller(4, starts=False), [THINK_OPEN] + [100] * 100)
    assert forced == CLOSING and step == 4 + GRACE_TOKENS


@pytest.mark.parametrize("max_tokens", [64, 200, 1000, 4096])
def test_answer_reserve_caps_thinking(max_tokens):
    step, forced = _run(_controller(None, max_tokens=max_tokens), [100] * max_tokens)
    assert forced == CLOSING
    assert step + len(CLOSING) <= max_tokens - answer_reserve(max_tokens)


def test_answer_reserve_rule():
    assert answer_reserve(1000) == 250
    assert answer_reserve(200) == 64
    assert answer_reserve(100) == 50


def test_reasoning_effort_mapping():
    assert resolve_budget(None, None) == (None, None)
    assert resolve_budget(100, None) == (None, 100)
    assert resolve_budget(None, "none") == (False, None)
    assert resolve_budget(None, "low") == (True, 512)
    assert resolve_budget(None, "high") == (True, None)
    assert resolve_budget(100, "medium") == (True, 100)
    assert resolve_budget(None, "low", {"low": 8, "medium": 9, "high": None}) == (True, 8)
    with pytest.raises(BadRequest):
        resolve_budget(None, "extreme")
    with pytest.raises(BadRequest):
        resolve_budget(-1, None)


def test_effort_budget_table_parsing():
    assert parse_effort_budgets("low=64,high=none") == {"low": 64, "medium": 2048, "high": None}
    for bad in ("low=x", "huge=5", "medium"):
        with pytest.raises(BadRequest):
            parse_effort_budgets(bad)


# ----- on a tiny Qwen3 through the llama.cpp engine ------------------------------------------


@pytest.fixture(scope="module", params=["llamacpp", "transformers"])
def qwen3(request, tiny_qwen3):
    """A tiny random Qwen3 on each engine: the budget is the chat layer's, engines only run it."""
    path = tiny_qwen3 if request.param == "llamacpp" else request.getfixturevalue("tiny_hf_qwen3")
    with qwenkit.load(str(path), engine=request.param, n_ctx=2048, n_threads=2, progress=False) as model:
        yield model


def _result(model, stream, **options):
    if not stream:
        return model.chat("Solve 2+2.", **options)
    last = None
    for delta in model.chat("Solve 2+2.", stream=True, **options):
        last = delta
    return last.result


@pytest.mark.parametrize("budget", [0, 1, 16, 256])
def test_budget_bounds_reasoning_and_an_answer_follows(qwen3, budget):
    phrase = len(qwen3._closing)
    results = [
        _result(qwen3, stream, max_tokens=budget + 200, thinking_budget=budget, seed=7) for stream in (False, True)
    ]
    whole, streamed = results
    for r in results:
        assert 0 < r.usage.reasoning_tokens <= budget + GRACE_TOKENS + phrase + 1  # +1: the model's own <think>
        assert r.content.strip(), "the answer part must not be empty"
        assert "Considering the limited time" in r.reasoning
    assert (whole.usage.prompt_tokens, whole.usage.completion_tokens, whole.usage.reasoning_tokens) == (
        streamed.usage.prompt_tokens,
        streamed.usage.completion_tokens,
        streamed.usage.reasoning_tokens,
    )  # cache hits may differ
    assert whole.content == streamed.content and whole.reasoning == streamed.reasoning


def test_max_tokens_200_with_thinking_still_answers(qwen3):
    r = qwen3.chat("Explain gravity.", max_tokens=200, seed=3)
    assert r.content.strip() and "</think>" not in r.content and r.usage.reasoning_tokens > 0
    assert r.usage.reasoning_tokens <= 200 - answer_reserve(200)
    assert r.finish_reason == "length" and r.usage.completion_tokens == 200


def test_too_few_tokens_to_think_turns_thinking_off(qwen3):
    turn = qwen3.prepare("hi", max_tokens=24)
    assert not turn.thinking
    r = qwen3.chat("hi", max_tokens=24, seed=1)
    assert r.reasoning is None and r.usage.reasoning_tokens == 0
    assert r.finish_reason == "length" and r.usage.completion_tokens == 24 and r.content.strip()  # all answer


def test_reasoning_effort_none_turns_thinking_off(qwen3):
    turn = qwen3.prepare("hi", reasoning_effort="none", max_tokens=20)
    assert not turn.thinking
    assert qwen3.engine.detokenize(turn.prompt).endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")
    r = qwen3.chat("hi", reasoning_effort="none", max_tokens=20, seed=1)
    assert r.reasoning is None and r.usage.reasoning_tokens == 0


def test_thinking_off_with_a_template_lacking_the_flag(source_gguf, tiny_cache):
    template = tiny.official_template("qwen3")
    block = (
        "    {%- if enable_thinking is defined and enable_thinking is false %}\n"
        "        {{- '<think>\\n\\n</think>\\n\\n' }}\n"
        "    {%- endif %}\n"
    )
    assert block in template
    flagless = template.replace(block, "")
    path = tiny.tiny_gguf("qwen3", tiny_cache, source_gguf=source_gguf, chat_template=flagless)
    with qwenkit.load(str(path), n_ctx=1024, n_threads=2, progress=False) as model:
        assert "enable_thinking" not in model.template.source
        off = model.prepare("hi", think=False)
        text = model.engine.detokenize(off.prompt)
        assert text.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")
        assert text.count("<think>") == 1
        r = model.chat("hi", think=False, max_tokens=16, seed=1)
        assert r.reasoning is None and r.usage.reasoning_tokens == 0


def test_history_reasoning_is_stripped_like_the_official_template(qwen3):
    messages = [
        {"role": "user", "content": "first question"},
        {"role": "assistant", "content": "first answer", "reasoning_content": "SECRET-EARLIER-REASONING"},
        {"role": "user", "content": "second question"},
    ]
    prompt = qwen3.engine.detokenize(qwen3.prepare(messages).prompt)
    assert "SECRET-EARLIER-REASONING" not in prompt
    assert "<|im_start|>assistant\nfirst answer<|im_end|>" in prompt
    inline = [messages[0], {"role": "assistant", "content": "<think>\nSECRET\n</think>\n\nfirst answer"}, messages[2]]
    assert "SECRET" not in qwen3.engine.detokenize(qwen3.prepare(inline).prompt)
