"""Model output to (reasoning, content, tool calls), streamed or whole.

Reasoning is split off first, so a `<tool_call>` written inside `<think>` is reasoning, never a
call. Feeding the output in any pieces and calling `finish` gives the same result as `parse`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from qwenkit.chat.reasoning import ReasoningParser
from qwenkit.chat.tools import ToolCall, parser_for


@dataclass
class Delta:
    """What one piece of output added; completed tool calls only."""

    reasoning: str = ""
    content: str = ""
    tool_calls: list[ToolCall] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.reasoning or self.content or self.tool_calls)


@dataclass(frozen=True)
class ParsedOutput:
    """A whole output, parsed."""

    reasoning: str
    content: str
    tool_calls: list[ToolCall]
    truncated_tool_call: bool  # the output ended inside a call, which is left in `content`


class OutputParser:
    """Streaming parser for one generation.

    `starts_in_thinking` comes from `ChatPrompt.starts_in_thinking`; `tool_format` ('hermes',
    'qwen3_coder', or None to leave calls as text) from `tools.tool_format(template)` when the
    request offers tools; `tools` (OpenAI tool definitions) type Qwen3-Coder arguments.
    """

    def __init__(
        self,
        starts_in_thinking: bool,
        tool_format: str | None = None,
        tools: Sequence[Mapping[str, Any]] | None = None,
    ) -> None:
        self.starts_in_thinking = starts_in_thinking
        self.tool_format = tool_format
        self.tools = tools
        self._reasoning = ReasoningParser(starts_in_thinking)
        self._calls = parser_for(tool_format, tools) if tool_format else None

    @property
    def truncated_tool_call(self) -> bool:
        """After `finish`: the output ended inside an incomplete tool call."""
        return bool(self._calls and self._calls.truncated)

    def feed(self, text: str) -> Delta:
        return self._route(*self._reasoning.feed(text), final=False)

    def finish(self) -> Delta:
        return self._route(*self._reasoning.finish(), final=True)

    def parse(self, text: str) -> ParsedOutput:
        """A whole output, parsed with this parser's settings (its streaming state is untouched)."""
        parser = OutputParser(self.starts_in_thinking, self.tool_format, self.tools)
        first, last = parser.feed(text), parser.finish()
        return ParsedOutput(
            reasoning=first.reasoning + last.reasoning,
            content=first.content + last.content,
            tool_calls=first.tool_calls + last.tool_calls,
            truncated_tool_call=parser.truncated_tool_call,
        )

    def _route(self, reasoning: str, content: str, final: bool) -> Delta:
        if self._calls is None:
            return Delta(reasoning, content)
        text, calls = self._calls.feed(content)
        if final:
            more_text, more_calls = self._calls.finish()
            text, calls = text + more_text, calls + more_calls
        return Delta(reasoning, text, calls)
