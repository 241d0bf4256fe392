"""Sampling defaults per thinking mode, and the documented Qwen prompt patterns."""

from __future__ import annotations

import pytest

from qwenkit.chat import coding_messages, math_messages, multilingual_messages, official_template, sampling_defaults
from qwenkit.engines.base import SamplingParams
from qwenkit.errors import BadRequest


def test_thinking_defaults() -> None:
    assert sampling_defaults(thinking=True) == {"temperature": 0.6, "top_p": 0.95, "top_k": 20, "min_p": 0.0}
    assert sampling_defaults(thinking=True, architecture="qwen2") == sampling_defaults(thinking=True)


def test_non_thinking_defaults() -> None:
    assert sampling_defaults(thinking=False, architecture="qwen3") == {
        "temperature": 0.7,
        "top_p": 0.8,
        "top_k": 20,
        "min_p": 0.0,
    }
    assert sampling_defaults(thinking=False, architecture="qwen2")["repetition_penalty"] == 1.05


def test_user_values_win_and_none_means_unset() -> None:
    values = sampling_defaults({"temperature": 0.0, "top_p": None, "max_tokens": 64, "seed": None}, thinking=True)
    assert values == {"temperature": 0.0, "top_p": 0.95, "top_k": 20, "min_p": 0.0, "max_tokens": 64}
    assert SamplingParams(**values).max_tokens == 64
    assert (
        sampling_defaults({"repetition_penalty": 1.0}, thinking=False, architecture="qwen2")["repetition_penalty"]
        == 1.0
    )


def test_unknown_sampling_parameter() -> None:
    with pytest.raises(BadRequest, match=r"unknown sampling parameter.*temprature"):
        sampling_defaults({"temprature": 0.1}, thinking=False)


def test_math_prompt() -> None:
    assert math_messages(" What is 2+2? ") == [
        {
            "role": "user",
            "content": "What is 2+2?\nPlease reason step by step, and put your final answer within \\boxed{}.",
        }
    ]
    french = math_messages("Combien font 2+2 ?", language="French")
    assert french[-1]["content"].endswith("within \\boxed{}. Write your reasoning and answer in French.")


def test_coding_prompt() -> None:
    messages = coding_messages("Reverse a string.", language="Python", tests=["assert rev('ab') == 'ba'"])
    assert messages[0] == {
        "role": "system",
        "content": "You are Qwen, created by Alibaba Cloud. You are a helpful assistant.",
    }
    assert messages[1] == {
        "role": "user",
        "content": (
            "Reverse a string.\n\nWrite the solution in Python.\n\n"
            "Your code must pass these tests:\n```python\nassert rev('ab') == 'ba'\n```\n\n"
            "Return the complete solution in a single ```python code block."
        ),
    }
    assert [m["role"] for m in coding_messages("x", system=None)] == ["user"]


def test_multilingual_prompts() -> None:
    assert multilingual_messages("¿Qué hora es?") == [
        {"role": "system", "content": "Always answer in the same language as the user's message."},
        {"role": "user", "content": "¿Qué hora es?"},
    ]
    assert multilingual_messages("Hi", language="Japanese", system="Be kind.")[0] == {
        "role": "system",
        "content": "Be kind.\n\nAlways answer in Japanese.",
    }


@pytest.mark.parametrize(
    "messages", [math_messages("1+1"), coding_messages("x", tests="assert f()"), multilingual_messages("Hola")]
)
def test_prompts_render_with_every_official_template(messages) -> None:
    for name in ("qwen2.5", "qwen3", "qwen3-coder", "qwq"):
        text = official_template(name).render(messages)
        assert messages[-1]["content"] in text and text.count("<|im_start|>user\n") == 1
