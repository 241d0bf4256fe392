"""Training data: JSONL rows of three kinds, told apart by their keys.

- chat: `{"messages": [...], "tools": [...]?, "enable_thinking": bool?}` (OpenAI-shaped messages;
  assistant turns may carry `reasoning_content`);
- prompt/completion: `{"prompt": ..., "completion": ...}`, strings (one user turn and its
  answer) or message lists (the conversation so far and the assistant's reply);
- text: `{"text": "..."}`, plain text trained on every token (no template).

Every bad row is reported with its line number, all at once.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qwenkit.chat.messages import normalize_messages, normalize_tools
from qwenkit.errors import QwenkitError

_SHOWN_ERRORS = 10


@dataclass(frozen=True)
class ChatExample:
    """A conversation: the loss covers its assistant turns."""

    messages: list[dict[str, Any]]
    tools: list[dict[str, Any]] | None = None
    enable_thinking: bool | None = None


@dataclass(frozen=True)
class TextExample:
    """Plain text: the loss covers every token."""

    text: str


Example = ChatExample | TextExample


def parse_row(row: Any) -> Example:
    """One example from one decoded JSON row (ValueError with the reason when it is not one)."""
    if not isinstance(row, Mapping):
        raise ValueError("expected a JSON object")
    if "messages" in row:
        return _chat(row["messages"], row.get("tools"), row.get("enable_thinking"))
    if "prompt" in row or "completion" in row:
        prompt, completion = row.get("prompt"), row.get("completion")
        if isinstance(prompt, str) and isinstance(completion, str):
            messages: Any = [{"role": "user", "content": prompt}, {"role": "assistant", "content": completion}]
        elif isinstance(prompt, list) and isinstance(completion, list):
            if not completion or any(not isinstance(m, Mapping) or m.get("role") != "assistant" for m in completion):
                raise ValueError("'completion' must be assistant messages")
            messages = prompt + completion
        else:
            raise ValueError("'prompt' and 'completion' must both be strings or both be message lists")
        return _chat(messages, row.get("tools"), row.get("enable_thinking"))
    if "text" in row:
        if not isinstance(row["text"], str) or not row["text"]:
            raise ValueError("'text' must be a non-empty string")
        return TextExample(row["text"])
    raise ValueError(f"no 'messages', 'prompt'/'completion' or 'text' key (found: {', '.join(row) or 'none'})")


def _chat(messages: Any, tools: Any, enable_thinking: Any) -> ChatExample:
    if enable_thinking is not None and not isinstance(enable_thinking, bool):
        raise ValueError("'enable_thinking' must be true or false")
    try:
        normalized = normalize_messages(messages)
        checked_tools = normalize_tools(tools)
    except QwenkitError as exc:
        raise ValueError(str(exc)) from None
    if not any(m["role"] == "assistant" for m in normalized[1:]):
        raise ValueError("no assistant message to learn from")
    return ChatExample(normalized, checked_tools, enable_thinking)


def load_jsonl(path: str | Path) -> list[Example]:
    """Every example of a JSONL file; QwenkitError naming each bad line when any is bad."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise QwenkitError(f"cannot read {path}: {exc}") from None
    examples: list[Example] = []
    errors: list[str] = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            examples.append(parse_row(json.loads(line)))
        except json.JSONDecodeError as exc:
            errors.append(f"line {number}: not JSON ({exc.msg}, column {exc.colno})")
        except ValueError as exc:
            errors.append(f"line {number}: {exc}")
    if errors:
        shown = "; ".join(errors[:_SHOWN_ERRORS])
        more = f" (and {len(errors) - _SHOWN_ERRORS} more)" if len(errors) > _SHOWN_ERRORS else ""
        raise QwenkitError(f"{path}: {len(errors)} bad row(s): {shown}{more}")
    if not examples:
        raise QwenkitError(f"{path} holds no examples")
    return examples


def split_held_out(examples: Sequence[Example], share: float, seed: int = 0) -> tuple[list[Example], list[Example]]:
    """(train, held-out): a seeded `share` of the examples held out (at least one, when any)."""
    import random

    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    n_held = min(max(1, round(len(examples) * share)), len(examples) - 1) if len(examples) > 1 else 0
    held = set(order[:n_held])
    return [e for i, e in enumerate(examples) if i not in held], [examples[i] for i in sorted(held)]
