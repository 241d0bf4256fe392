"""Model output to (reasoning, content, tool calls), streamed or whole.

Reasoning is split off first, so a `<tool_call>` written inside `<think>` is reasoning: a model
that thinks about a call and then closes `</think>` makes its real call after it. One that ends
the output without ever closing its reasoning (it called from inside `<think>`, a frequent slip
of prompt-opened thinking) still gets its complete calls: they are taken from the reasoning at
the end. Feeding the output in any pieces and calling `finish` gives the same result as `parse`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from qwenkit.chat.reasoning import ReasoningParser
from qwenkit.chat.tools import ToolCall, ToolCallPart, parser_for


@dataclass
class Delta:
    """What one piece of output added: completed tool calls, and the streaming pieces of calls
    (`tool_call_parts`, see `tools.base`); at the end, `unfinished_call`, the text of a call that
    was announced in parts but cut off (it belongs to the whole result's content, not the stream's)."""

    reasoning: str = ""
    content: str = ""
    tool_calls: list[ToolCall] = field(default_factory=list)
    tool_call_parts: list[ToolCallPart] = field(default_factory=list)
    unfinished_call: str = ""

    def __bool__(self) -> bool:
        return bool(self.reasoning or self.content or self.tool_calls or self.tool_call_parts or self.unfinished_call)


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
        self._thought = ""  # the reasoning so far, for calls made inside it

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
            content=first.content + last.content + last.unfinished_call,
            tool_calls=first.tool_calls + last.tool_calls,
            truncated_tool_call=parser.truncated_tool_call,
        )

    def _route(self, reasoning: str, content: str, final: bool) -> Delta:
        if self._calls is None:
            return Delta(reasoning, content)
        self._thought += reasoning
        text, calls = self._calls.feed(content)
        if not final:
            return Delta(reasoning, text, calls, self._calls.take_parts())
        more_text, more_calls = self._calls.finish()
        delta = Delta(reasoning, text + more_text, calls + more_calls, self._calls.take_parts())
        delta.unfinished_call = self._calls.unfinished
        if self._reasoning.in_reasoning and self.tool_format:
            for call in self._calls_in_thought(self.tool_format):
                delta.tool_calls.append(call)
                delta.tool_call_parts.append(ToolCallPart(self._calls.count, call.arguments, call.id, call.name))
                self._calls.count += 1
        return delta

    def _calls_in_thought(self, tool_format: str) -> list[ToolCall]:
        """The complete calls written inside reasoning that never closed."""
        reader = parser_for(tool_format, self.tools)
        return [] if reader is None else reader.feed(self._thought)[1] + reader.finish()[1]
