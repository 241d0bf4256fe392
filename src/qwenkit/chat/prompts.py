"""Message lists for the prompt patterns Qwen documents: math, coding, multilingual."""

from __future__ import annotations

from collections.abc import Sequence

Messages = list[dict[str, str]]

MATH_INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."
CODER_SYSTEM = "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."
SAME_LANGUAGE = "Always answer in the same language as the user's message."


def math_messages(problem: str, *, language: str | None = None, system: str | None = None) -> Messages:
    """A math problem followed by Qwen's step-by-step instruction; `language` asks for the
    reasoning and the answer in that language."""
    text = f"{problem.strip()}\n{MATH_INSTRUCTION}"
    if language:
        text += f" Write your reasoning and answer in {language}."
    return _messages(system, text)


def coding_messages(
    task: str,
    *,
    language: str | None = None,
    tests: str | Sequence[str] | None = None,
    system: str | None = CODER_SYSTEM,
) -> Messages:
    """A coding task: optional target language and tests the code must pass; the answer is
    asked for as one fenced code block."""
    fence = (language or "").lower()
    parts = [task.strip()]
    if language:
        parts.append(f"Write the solution in {language}.")
    if tests:
        listing = tests if isinstance(tests, str) else "\n".join(tests)
        parts.append(f"Your code must pass these tests:\n```{fence}\n{listing.strip()}\n```")
    parts.append(f"Return the complete solution in a single ```{fence} code block.")
    return _messages(system, "\n\n".join(parts))


def multilingual_messages(prompt: str, *, language: str | None = None, system: str | None = None) -> Messages:
    """A prompt answered in the user's own language, or in `language` when given."""
    rule = f"Always answer in {language}." if language else SAME_LANGUAGE
    return _messages(f"{system}\n\n{rule}" if system else rule, prompt)


def _messages(system: str | None, user: str) -> Messages:
    head = [{"role": "system", "content": system}] if system else []
    return [*head, {"role": "user", "content": user}]
