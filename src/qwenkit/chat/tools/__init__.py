"""Tool-call parsers, one module per output format, and the registry that picks one."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from qwenkit.chat.template import ChatTemplate
from qwenkit.chat.tools.base import ToolCall, ToolCallPart, ToolParser, new_call_id
from qwenkit.chat.tools.hermes import HermesParser
from qwenkit.chat.tools.qwen3_coder import Qwen3CoderParser
from qwenkit.errors import BadRequest

PARSERS: dict[str, type[ToolParser]] = {p.name: p for p in (HermesParser, Qwen3CoderParser)}


def tool_format(template: ChatTemplate) -> str | None:
    """The call format a template teaches the model; None when it has no tool markup."""
    if "<function=" in template.source:
        return Qwen3CoderParser.name
    if "<tool_call>" in template.source:
        return HermesParser.name
    return None


def forced_call_grammar(template: ChatTemplate, tools: Sequence[Mapping[str, Any]], *, several: bool) -> str | None:
    """The grammar forcing a call of one of `tools` (function specs) in the template's call format
    (Hermes', Qwen's default, for a template without tool markup); None where that format's calls
    are not enforced."""
    return PARSERS[tool_format(template) or HermesParser.name].call_grammar(tools, several=several)


def parser_for(
    template_or_name: ChatTemplate | str, tools: Sequence[Mapping[str, Any]] | None = None
) -> ToolParser | None:
    """A fresh parser for a format name ('hermes', 'qwen3_coder') or for a template's format."""
    if not isinstance(template_or_name, str):
        name = tool_format(template_or_name)
        return PARSERS[name](tools) if name else None
    key = template_or_name.lower().replace("-", "_")
    if key not in PARSERS:
        raise BadRequest(f"unknown tool-call format {template_or_name!r} (known: {', '.join(PARSERS)})")
    return PARSERS[key](tools)


__all__ = [
    "PARSERS",
    "HermesParser",
    "Qwen3CoderParser",
    "ToolCall",
    "ToolCallPart",
    "ToolParser",
    "forced_call_grammar",
    "new_call_id",
    "parser_for",
    "tool_format",
]
