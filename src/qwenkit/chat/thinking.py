"""Qwen3 thinking mode: the hard switch and the `/think` and `/no_think` soft switches.

The empty think block that turns thinking off belongs to the template (`template.close_thinking`).

Precedence (as in the Qwen3 docs): an explicit `enable_thinking=False` always wins and soft
switches are then ignored; otherwise the most recent soft switch in a user or system message
decides, and with none thinking is on.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from qwenkit.chat.messages import message_text, normalize_messages
from qwenkit.chat.template import ChatTemplate

_SOFT_SWITCH = re.compile(r"(?<!\S)/(no_think|think)(?![\w/])")


@dataclass(frozen=True)
class ChatPrompt:
    """A rendered prompt and the thinking mode it puts the model in."""

    text: str
    thinking: bool  # the model is expected to reason before answering
    starts_in_thinking: bool  # generation begins inside a <think> block: pass to OutputParser


def soft_switch(messages: Sequence[Mapping[str, Any]]) -> bool | None:
    """The most recent `/think` (True) or `/no_think` (False) in a user or system message."""
    for message in reversed(messages):
        if message.get("role") in ("user", "system") and isinstance(message.get("content"), (str, list)):
            found: list[str] = _SOFT_SWITCH.findall(message_text(message["content"]))
            if found:
                return found[-1] == "think"
    return None


def resolve_thinking(enable_thinking: bool | None, messages: Sequence[Mapping[str, Any]]) -> bool:
    """The effective mode of a hybrid model for this request (see the module docstring)."""
    if enable_thinking is False:
        return False
    switch = soft_switch(messages)
    return True if switch is None else switch


def build_prompt(
    template: ChatTemplate,
    messages: Sequence[Mapping[str, Any]],
    *,
    tools: Sequence[Mapping[str, Any]] | None = None,
    enable_thinking: bool | None = None,
    add_generation_prompt: bool = True,
    **kwargs: Any,
) -> ChatPrompt:
    """Render `messages` with Qwen's thinking semantics applied.

    Hybrid templates (Qwen3) follow the hard and soft switches; templates whose generation
    prompt opens `<think>` (Qwen3.5, Qwen3-Next-Thinking, QwQ, 2507-Thinking) think unless
    `enable_thinking=False`, which closes the block, or, where the template itself does not think
    by default (Qwen3.5's small models), only when `enable_thinking=True`; other templates never
    think. Thinking templates always receive an explicit `enable_thinking`.
    """
    normalized = normalize_messages(messages)
    if template.supports_thinking:
        thinking = resolve_thinking(enable_thinking, normalized)
    elif enable_thinking is None:
        thinking = template.thinks_by_default
    else:
        thinking = template.opens_thinking and enable_thinking
    flag = thinking if template.supports_thinking or template.opens_thinking else enable_thinking
    text = template.render(
        normalized, tools=tools, add_generation_prompt=add_generation_prompt, enable_thinking=flag, **kwargs
    )
    return ChatPrompt(text=text, thinking=thinking, starts_in_thinking=thinking and add_generation_prompt)
