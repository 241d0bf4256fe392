"""Final answers of math solutions: the last `\\boxed{}`, else a plainly stated one; equivalence by math-verify."""

from __future__ import annotations

import re

_ANSWER_IS = re.compile(r"(?:final answer|answer)\s*(?:is|:|=)\s*[:：]?\s*(.+)", re.IGNORECASE)
_NUMBER = re.compile(r"-?\d+(?:[.,]\d+)*(?:/\d+)?")


def last_boxed(text: str) -> str | None:
    """The content of the last `\\boxed{...}` (or `\\fbox{...}`), braces balanced; None if there is none."""
    start = max(text.rfind("\\boxed"), text.rfind("\\fbox"))
    if start < 0:
        return None
    brace = text.find("{", start)
    if brace < 0:
        return None
    depth = 0
    for i in range(brace, len(text)):
        depth += {"{": 1, "}": -1}.get(text[i], 0)
        if depth == 0:
            return text[brace + 1 : i].strip()
    return None  # cut off before the box closed


def plain_answer(text: str) -> str | None:
    """An answer stated without a box: the last "answer is X" line, else the last number."""
    stated = _ANSWER_IS.findall(text)
    if stated:
        answer = stated[-1].strip().rstrip(".。").strip()
        return answer.strip("$ ").strip() or None
    numbers = _NUMBER.findall(text)
    return numbers[-1] if numbers else None


def extract(text: str) -> tuple[str | None, str]:
    """(answer, how): how is "boxed", "plain" or "none"."""
    boxed = last_boxed(text)
    if boxed is not None:
        return boxed, "boxed"
    plain = plain_answer(text)
    return (plain, "plain") if plain is not None else (None, "none")


def equivalent(gold: str, answer: str) -> bool:
    """Mathematically equal (math-verify on both as LaTeX), or equal as normalized text."""
    from math_verify import parse, verify

    if _normalize(gold) == _normalize(answer):
        return True
    try:
        expected = parse(f"${gold}$", parsing_timeout=None)
        got = parse(f"${answer}$", parsing_timeout=None)
        return bool(expected and got and verify(expected, got, timeout_seconds=None))
    except Exception:  # math-verify raises on LaTeX it cannot read: not equivalent
        return False


def _normalize(text: str) -> str:
    text = re.sub(r"\\text\{([^}]*)\}", r"\1", text)
    text = text.replace("\\left", "").replace("\\right", "").replace("\\!", "").replace("dfrac", "frac")
    return re.sub(r"\s+", "", text).rstrip(".").strip("$")
