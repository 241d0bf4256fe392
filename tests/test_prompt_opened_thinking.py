"""Thinking opened by the prompt (Qwen3.5, Qwen3-Next-Thinking, Qwen3-2507-Thinking): the model never
writes `<think>` itself, and reasoning parsing, usage, the thinking budget, `reasoning_effort`,
thinking off and the answer guarantee still hold.

The official Qwen3.5 template runs on the tiny random Qwen3 models (same special tokens): embedded
in the GGUF for llama.cpp (so the template is the model file's own, as in a real Qwen3.5 GGUF, and
the `qwenkit run` test below loads it like a user), and given through the Python API on
transformers. A tiny random model never closes `</think>` by itself: every `</think>` seen here was
forced by the budget or the answer reserve.
"""

from __future__ import annotations

import json

import pytest
from test_cli import THREADS, check_ok, cli

import qwenkit
from qwenkit.chat import official_template
from qwenkit.chat.budget import GRACE_TOKENS, STOP_PHRASE, answer_reserve
from qwenkit.model import Model
from qwenkit.testing import tiny

QWEN35 = official_template("qwen3.5").source
OPEN_PROMPT_TAIL = "<|im_start|>assistant\n<think>\n"
EMPTY_THINK = "<think>\n\n</think>\n\n"


@pytest.fixture(scope="module")
def qwen35_gguf(source_gguf, tiny_cache):
    """The tiny Qwen3 GGUF carrying the official Qwen3.5 chat template."""
    return tiny.tiny_gguf("qwen3", tiny_cache, source_gguf=source_gguf, chat_template=QWEN35)


@pytest.fixture(scope="module", params=["llamacpp", "transformers"])
def model(request, qwen35_gguf):
    if request.param == "llamacpp":
        with qwenkit.load(str(qwen35_gguf), n_ctx=2048, n_threads=2, progress=False) as loaded:
            assert loaded.template.source == QWEN35  # the model file's own template
            yield loaded
        return
    with qwenkit.load(
        str(request.getfixturevalue("tiny_hf_qwen3")), engine="transformers", n_threads=2, progress=False
    ) as loaded:
        yield Model(loaded.engine, official_template("qwen3.5"), name="tiny-qwen3.5", architecture="qwen3_5_text")


def _whole_and_streamed(model: Model, prompt: str = "Solve 2+2.", **options):
    whole = model.chat(prompt, **options)
    deltas = list(model.chat(prompt, stream=True, **options))
    return whole, deltas


def test_the_prompt_opens_thinking(model):
    turn = model.prepare("hi", max_tokens=200)
    assert model.template.opens_thinking and not model.template.supports_thinking
    assert turn.thinking and turn.starts_in_thinking
    assert model.engine.detokenize(turn.prompt).endswith(OPEN_PROMPT_TAIL)


@pytest.mark.parametrize("budget", [0, 16, 64])
def test_budget_closes_thinking_the_model_never_opened(model, budget):
    whole, deltas = _whole_and_streamed(model, max_tokens=budget + 200, thinking_budget=budget, seed=7)
    streamed = deltas[-1].result
    phrase = len(model._closing)
    for result in (whole, streamed):
        assert STOP_PHRASE in result.reasoning and "<think>" not in result.reasoning
        assert "</think>" not in result.reasoning + result.content
        assert result.content.strip(), "an answer must follow the forced close"
        # every token up to the forced </think> is reasoning, counted from the first one
        assert budget < result.usage.reasoning_tokens <= budget + GRACE_TOKENS + phrase
        assert result.usage.reasoning_tokens < result.usage.completion_tokens
    assert (whole.content, whole.reasoning, whole.usage.completion_tokens, whole.usage.reasoning_tokens) == (
        streamed.content,
        streamed.reasoning,
        streamed.usage.completion_tokens,
        streamed.usage.reasoning_tokens,
    )
    kinds = ["reasoning" if d.reasoning else "content" for d in deltas if d.reasoning or d.content]
    assert kinds == sorted(kinds, key=lambda kind: kind == "content")  # all reasoning, then all answer


def test_the_answer_reserve_holds_without_a_budget(model):
    result = model.chat("Explain gravity.", max_tokens=200, seed=3)
    assert result.content.strip() and STOP_PHRASE in result.reasoning
    assert result.usage.reasoning_tokens <= 200 - answer_reserve(200)
    assert result.finish_reason == "length" and result.usage.completion_tokens == 200


@pytest.mark.parametrize("options", [{"think": False}, {"reasoning_effort": "none"}])
def test_thinking_off_writes_the_empty_block(model, options):
    turn = model.prepare("hi", max_tokens=20, **options)
    text = model.engine.detokenize(turn.prompt)
    assert not turn.thinking and not turn.starts_in_thinking
    assert text.endswith("<|im_start|>assistant\n" + EMPTY_THINK) and text.count("<think>") == 1
    result = model.chat("hi", max_tokens=20, seed=1, **options)
    assert result.reasoning is None and result.usage.reasoning_tokens == 0 and result.content


def test_reasoning_effort_low_is_a_budget(model):
    turn = model.prepare("hi", reasoning_effort="low", max_tokens=2000)
    assert turn.thinking and turn.thinking_budget == 512
    result = model.chat("hi", reasoning_effort="low", max_tokens=120, seed=2)
    assert result.content.strip() and STOP_PHRASE in result.reasoning


def test_too_few_tokens_to_think_answers_directly(model):
    turn = model.prepare("hi", max_tokens=24)
    assert not turn.thinking
    assert model.engine.detokenize(turn.prompt).endswith(EMPTY_THINK)


def test_history_keeps_reasoning_only_after_the_last_user_query(model):
    messages = [
        {"role": "user", "content": "first"},
        {"role": "assistant", "content": "one", "reasoning_content": "EARLIER-THOUGHT"},
        {"role": "user", "content": "second"},
        {"role": "assistant", "content": "", "reasoning_content": "NEED-A-TOOL", "tool_calls": [_call()]},
        {"role": "tool", "content": "21C", "tool_call_id": "c1"},
    ]
    prompt = model.engine.detokenize(model.prepare(messages, tools=[WEATHER], max_tokens=200).prompt)
    assert "EARLIER-THOUGHT" not in prompt and "<|im_start|>assistant\none<|im_end|>" in prompt
    assert "<think>\nNEED-A-TOOL\n</think>\n\n<tool_call>\n<function=get_weather>" in prompt
    assert prompt.endswith("<tool_response>\n21C\n</tool_response><|im_end|>\n" + OPEN_PROMPT_TAIL)


WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}


def _call() -> dict:
    return {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}


def test_the_template_picks_xml_tool_calls(model):
    turn = model.prepare("Weather in Paris?", tools=[WEATHER], max_tokens=200)
    assert turn.tool_format == "qwen3_coder"


def test_cli_run_with_a_thinking_budget_ends_with_an_answer(qwen35_gguf):
    """`qwenkit run -m <a Qwen3.5-templated GGUF> --thinking-budget 16`, as a user runs it."""
    proc = cli("run", "Solve 2+2.", "-m", str(qwen35_gguf), "--thinking-budget", "16", "--json", "-t", THREADS)
    check_ok(proc)
    data = json.loads(proc.stdout)
    assert data["text"].strip() and STOP_PHRASE in data["reasoning"]
    assert 16 < data["usage"]["reasoning_tokens"] <= 16 + GRACE_TOKENS + 40
    streamed = cli("run", "Solve 2+2.", "-m", str(qwen35_gguf), "--thinking-budget", "16", "-t", THREADS)
    check_ok(streamed)
    assert streamed.stdout.strip() and STOP_PHRASE in streamed.stderr


@pytest.mark.parametrize("hybrid_arch", ["qwen35"], indirect=True)
def test_cli_run_on_the_tiny_qwen35_gguf_ends_with_an_answer(tiny_hybrid_gguf):
    """`qwenkit run -m <tiny qwen3.5 gguf> --thinking-budget 16`: a real `qwen35` GGUF (hybrid
    attention, its own Qwen3.5 template), thinking opened by the prompt and closed by the budget."""
    proc = cli("run", "Solve 2+2.", "-m", str(tiny_hybrid_gguf), "--thinking-budget", "16", "--json", "-t", THREADS)
    check_ok(proc)
    data = json.loads(proc.stdout)
    assert data["text"].strip() and STOP_PHRASE in data["reasoning"]
    assert 16 < data["usage"]["reasoning_tokens"] <= 16 + GRACE_TOKENS + 40
