"""Thinking mode: hard and soft switches, the empty think block, where generation starts."""

from __future__ import annotations

import pytest

from qwenkit.chat import ChatTemplate, build_prompt, close_thinking, official_template, resolve_thinking, soft_switch

EMPTY_THINK = "<think>\n\n</think>\n\n"
FLAG_LINES = (
    "    {%- if enable_thinking is defined and enable_thinking is false %}\n"
    "        {{- '<think>\\n\\n</think>\\n\\n' }}\n"
    "    {%- endif %}\n"
)


def user(text: str) -> dict:
    return {"role": "user", "content": text}


def flagless_qwen3() -> ChatTemplate:
    """The official Qwen3 template with its enable_thinking lines deleted."""
    source = official_template("qwen3").source
    assert FLAG_LINES in source
    flagless = source.replace(FLAG_LINES, "")
    assert "enable_thinking" not in flagless
    return ChatTemplate(flagless, name="qwen3-flagless")


def thinking_2507() -> ChatTemplate:
    """A Qwen3-2507-Thinking-style template: no flag, the generation prompt opens <think>."""
    source = flagless_qwen3().source
    opening = "{{- '<|im_start|>assistant\\n' }}"
    assert source.count(opening) == 1
    return ChatTemplate(source.replace(opening, "{{- '<|im_start|>assistant\\n<think>\\n' }}"), name="2507")


def generation_tail(prompt: str) -> str:
    return prompt[prompt.rindex("<|im_start|>assistant\n") :]


def test_empty_block_inserted_when_template_lacks_the_flag() -> None:
    template = flagless_qwen3()
    assert template.supports_thinking and not template.opens_thinking
    messages = [{"role": "system", "content": "Be brief."}, user("Hi")]
    assert template.render(messages) == official_template("qwen3").render(messages)
    off = template.render(messages, enable_thinking=False)
    assert off == official_template("qwen3").render(messages, enable_thinking=False)
    assert off.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")
    assert generation_tail(off) == "<|im_start|>assistant\n" + EMPTY_THINK


def test_empty_block_not_duplicated_when_template_has_the_flag() -> None:
    off = official_template("qwen3").render([user("Hi")], enable_thinking=False)
    assert generation_tail(off) == "<|im_start|>assistant\n" + EMPTY_THINK
    assert off.count("<think>") == 1


def test_no_block_for_non_thinking_templates() -> None:
    for name in ("qwen2.5", "qwen3-coder"):
        off = official_template(name).render([user("Hi")], enable_thinking=False)
        assert off.endswith("<|im_start|>assistant\n") and "<think>" not in off


def test_no_block_without_generation_prompt() -> None:
    messages = [user("Hi"), {"role": "assistant", "content": "Hello"}]
    assert (
        not flagless_qwen3().render(messages, add_generation_prompt=False, enable_thinking=False).endswith(EMPTY_THINK)
    )


@pytest.mark.parametrize(
    ("prompt", "closed"),
    [
        ("<|im_start|>assistant\n", "<|im_start|>assistant\n" + EMPTY_THINK),
        ("<|im_start|>assistant\n<think>\n", "<|im_start|>assistant\n" + EMPTY_THINK),
        ("<|im_start|>assistant\n<think>\n</think>", "<|im_start|>assistant\n" + EMPTY_THINK),
        ("<|im_start|>assistant\n" + EMPTY_THINK, "<|im_start|>assistant\n" + EMPTY_THINK),
    ],
)
def test_close_thinking(prompt: str, closed: str) -> None:
    assert close_thinking(prompt) == closed
    assert close_thinking(closed) == closed


@pytest.mark.parametrize(
    ("contents", "switch"),
    [
        (["Hi"], None),
        (["Hi /no_think"], False),
        (["/no_think Hi", "again /think"], True),
        (["Hi /think", "no switch here"], True),
        (["a /think then /no_think"], False),
        (["see /home/think and a/no_think and /thinking"], None),
    ],
)
def test_soft_switch_latest_wins(contents: list[str], switch: bool | None) -> None:
    messages = []
    for text in contents:
        messages += [user(text), {"role": "assistant", "content": "/think (assistant text is ignored)"}]
    assert soft_switch(messages) == switch


def test_soft_switch_in_system_message() -> None:
    assert soft_switch([{"role": "system", "content": "You are brief. /no_think"}, user("Hi")]) is False
    assert soft_switch([{"role": "system", "content": "/no_think"}, user("Hi /think")]) is True


@pytest.mark.parametrize(
    ("flag", "text", "thinking"),
    [
        (None, "Hi", True),
        (True, "Hi", True),
        (False, "Hi", False),
        (None, "Hi /no_think", False),
        (True, "Hi /no_think", False),  # with thinking enabled the soft switch decides
        (False, "Hi /think", False),  # the hard switch always wins
    ],
)
def test_resolve_thinking(flag, text, thinking) -> None:
    assert resolve_thinking(flag, [user(text)]) is thinking


@pytest.mark.parametrize("template", [official_template("qwen3"), flagless_qwen3()], ids=["qwen3", "flagless"])
def test_build_prompt_hybrid(template: ChatTemplate) -> None:
    on = build_prompt(template, [user("Hi")])
    assert on.thinking and on.starts_in_thinking
    assert on.text == "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    soft = build_prompt(template, [user("Hi /no_think")])
    assert not soft.thinking and not soft.starts_in_thinking
    assert soft.text == "<|im_start|>user\nHi /no_think<|im_end|>\n<|im_start|>assistant\n" + EMPTY_THINK
    hard = build_prompt(template, [user("Hi /think")], enable_thinking=False)
    assert not hard.thinking and hard.text.endswith("assistant\n" + EMPTY_THINK)


OPENING = [official_template(n) for n in ("qwq", "qwen3.5", "qwen3-next-thinking")] + [thinking_2507()]


@pytest.mark.parametrize("template", OPENING, ids=["qwq", "qwen3.5", "qwen3-next-thinking", "2507-thinking"])
def test_build_prompt_template_opening_think(template: ChatTemplate) -> None:
    assert template.opens_thinking and template.thinks_by_default and not template.supports_thinking
    on = build_prompt(template, [user("Hi /no_think")])  # soft switches are a hybrid-model feature
    assert on.thinking and on.starts_in_thinking
    assert on.text.endswith("<|im_start|>assistant\n<think>\n")
    off = build_prompt(template, [user("Hi")], enable_thinking=False)
    assert not off.thinking and not off.starts_in_thinking
    assert generation_tail(off.text) == "<|im_start|>assistant\n" + EMPTY_THINK


@pytest.mark.parametrize("name", ["qwen2.5", "qwen3-coder"])
def test_build_prompt_non_thinking(name: str) -> None:
    prompt = build_prompt(official_template(name), [user("Hi /think")], enable_thinking=True)
    assert not prompt.thinking and not prompt.starts_in_thinking
    assert prompt.text.endswith("<|im_start|>assistant\n")


def qwen35_small() -> ChatTemplate:
    """Qwen3.5's template as the small models ship it (reported for 0.8B and 2B): the generation
    prompt opens `<think>` only when asked, and writes the empty block otherwise."""
    source = official_template("qwen3.5").source
    opened, closed = "{{- '<think>\\n' }}", "{{- '<think>\\n\\n</think>\\n\\n' }}"
    test = "{%- if enable_thinking is defined and enable_thinking is "
    default_on = f"{test}false %}}\n        {closed}\n    {{%- else %}}\n        {opened}"
    default_off = f"{test}true %}}\n        {opened}\n    {{%- else %}}\n        {closed}"
    assert source.count(default_on) == 1
    return ChatTemplate(source.replace(default_on, default_off), name="qwen3.5-small")


def test_a_template_that_does_not_think_by_default_is_followed() -> None:
    template = qwen35_small()
    assert template.opens_thinking and not template.thinks_by_default and not template.supports_thinking
    default = build_prompt(template, [user("Hi")])
    assert not default.thinking and not default.starts_in_thinking
    assert generation_tail(default.text) == "<|im_start|>assistant\n" + EMPTY_THINK
    on = build_prompt(template, [user("Hi")], enable_thinking=True)
    assert on.thinking and on.starts_in_thinking and on.text.endswith("<|im_start|>assistant\n<think>\n")
    off = build_prompt(template, [user("Hi")], enable_thinking=False)
    assert not off.thinking and generation_tail(off.text) == "<|im_start|>assistant\n" + EMPTY_THINK
