"""Tool calls framed by `<tool_call>` ... `</tool_call>`: the streaming part every format shares.

Text outside the frames is content, emitted as soon as it cannot be the start of a frame;
whitespace touching a frame belongs to the markup. A frame whose body the format cannot parse
is given back verbatim as content. At the end of the output an unclosed frame is accepted when
its body is already a complete call, and is otherwise given back as content with `truncated`
set. Nothing raises on model output.

Besides whole calls, a parser hands out `ToolCallPart`s for streaming (OpenAI's `tool_calls`
deltas): a format that can read an unfinished body (`partial`) announces the call's id and name
as soon as its body names it, then its arguments text piece by piece; the others give each
call as one part when it completes. A call announced but cut off (the output ended inside it,
`max_tokens`) never becomes a valid call: its arguments never close, and its text is kept in
`unfinished`, not in the content (which the stream has no way to take back).
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from qwenkit.chat.messages import normalize_tools
from qwenkit.chat.tags import WHITESPACE, held_suffix

OPEN, CLOSE = "<tool_call>", "</tool_call>"


def loads_json(text: str) -> Any:
    """`json.loads` that rejects NaN and Infinity, which are not JSON; ValueError when invalid."""
    try:
        return json.loads(text, parse_constant=_reject_constant)
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def new_call_id() -> str:
    """An OpenAI-style tool call id."""
    return "call_" + secrets.token_hex(12)


@dataclass(frozen=True)
class ToolCall:
    """A parsed call; `arguments` is JSON object text, as in the OpenAI API."""

    id: str
    name: str
    arguments: str

    @classmethod
    def new(cls, name: str, arguments: dict[str, Any]) -> ToolCall:
        """A call with a fresh id and `arguments` serialized as JSON."""
        return cls(new_call_id(), name, json.dumps(arguments, ensure_ascii=False))

    def to_openai(self, index: int | None = None) -> dict[str, Any]:
        """The call as an OpenAI `tool_calls` entry; give `index` for a streaming delta."""
        entry = {"id": self.id, "type": "function", "function": {"name": self.name, "arguments": self.arguments}}
        return entry if index is None else {"index": index, **entry}


@dataclass(frozen=True)
class ToolCallPart:
    """A streamed piece of the call at `index` (its place among this output's calls): the first
    piece of a call carries its `id` and `name`, and `arguments` pieces join to its arguments."""

    index: int
    arguments: str = ""
    id: str | None = None
    name: str | None = None

    def to_openai(self) -> dict[str, Any]:
        """The piece as an OpenAI streaming `tool_calls` entry."""
        function: dict[str, str] = {"arguments": self.arguments}
        if self.name is not None:
            function["name"] = self.name
        entry: dict[str, Any] = {"index": self.index, "function": function}
        return entry if self.id is None else {**entry, "id": self.id, "type": "function"}


@dataclass
class _Announced:
    """A call whose id and name were streamed before it completed, and the arguments sent so far."""

    index: int
    id: str
    name: str
    sent: str = ""


class ToolParser:
    """Streaming splitter of answer text into content and tool calls; subclasses parse bodies."""

    name: ClassVar[str]

    def __init__(self, tools: Sequence[Mapping[str, Any]] | None = None) -> None:
        self.tools = {spec["name"]: spec for spec in map(_function_spec, normalize_tools(tools) or ())}
        self.truncated = False
        self.unfinished = ""  # the text of an announced call the output ended inside
        self.count = 0  # calls announced or completed so far
        self._parts: list[ToolCallPart] = []
        self._announced: _Announced | None = None
        self._buf = ""
        self._pad = ""  # whitespace held back before an open frame
        self._in_call = False
        self._after_call = False

    def parse_call(self, body: str) -> ToolCall | None:
        """The call a closed frame's body holds, or None when it is not one."""
        raise NotImplementedError

    def parse_unclosed(self, body: str) -> ToolCall | None:
        """The call the body of a frame the output ended in holds, only when it is complete."""
        return self.parse_call(body)

    def partial(self, body: str) -> tuple[str, str] | None:
        """(name, the arguments text certain so far) of an unfinished body; None when unknown.
        The arguments text only ever grows, and is a prefix of the complete call's."""
        return None

    def take_parts(self) -> list[ToolCallPart]:
        """The streaming pieces since the last call."""
        parts, self._parts = self._parts, []
        return parts

    @classmethod
    def call_grammar(cls, tools: Sequence[Mapping[str, Any]], *, several: bool) -> str | None:
        """A GBNF grammar forcing a call of one of `tools` (function specs) in this format, or
        several calls; None where the format's calls are not enforced (the output stays free)."""
        return None

    def feed(self, text: str) -> tuple[str, list[ToolCall]]:
        """The content and the completed calls that `text` adds."""
        self._buf += text
        return self._drain(final=False)

    def finish(self) -> tuple[str, list[ToolCall]]:
        """Whatever is left at the end of the output."""
        return self._drain(final=True)

    def _drain(self, final: bool) -> tuple[str, list[ToolCall]]:
        content: list[str] = []
        calls: list[ToolCall] = []
        while self._buf:
            buf = self._buf
            if self._in_call:
                at = buf.find(CLOSE)
                if at < 0 and not final:
                    self._stream(buf)
                    break
                body = buf if at < 0 else buf[:at]
                call = self.parse_call(body) if at >= 0 else self.parse_unclosed(body)
                if call:
                    calls.append(self._complete(call))
                    self._after_call = True
                elif self._announced is not None:
                    self.unfinished += self._pad + OPEN + body + ("" if at < 0 else CLOSE)
                    self.truncated = self.truncated or at < 0
                else:
                    content.append(self._pad + OPEN + body + ("" if at < 0 else CLOSE))
                    self.truncated = self.truncated or at < 0
                self._announced = None
                self._buf = "" if at < 0 else buf[at + len(CLOSE) :]
                self._pad, self._in_call = "", False
            elif self._after_call:
                self._buf = buf.lstrip(WHITESPACE)
                self._after_call = not self._buf
            else:
                at = buf.find(OPEN)
                if at >= 0:
                    text = buf[:at].rstrip(WHITESPACE)
                    content.append(text)
                    self._pad = buf[len(text) : at]
                    self._buf, self._in_call = buf[at + len(OPEN) :], True
                    continue
                keep = 0 if final else held_suffix(buf, OPEN, WHITESPACE)
                content.append(buf[: len(buf) - keep])
                self._buf = buf[len(buf) - keep :]
                break
        if final and self._in_call:  # the output ended right after an opening tag
            content.append(self._pad + OPEN)
            self.truncated, self._in_call = True, False
        return "".join(content), calls

    def _stream(self, body: str) -> None:
        """Parts for what the open frame's body already shows."""
        progress = self.partial(body)
        if progress is None:
            return
        name, arguments = progress
        if self._announced is None:
            self._announced = _Announced(self.count, new_call_id(), name)
            self.count += 1
            self._parts.append(ToolCallPart(self._announced.index, "", self._announced.id, name))
        announced = self._announced
        if len(arguments) > len(announced.sent) and arguments.startswith(announced.sent):
            self._parts.append(ToolCallPart(announced.index, arguments[len(announced.sent) :]))
            announced.sent = arguments

    def _complete(self, call: ToolCall) -> ToolCall:
        """`call`, completed: its last part (or its only one), under the id it was announced with."""
        announced = self._announced
        if announced is None:
            self._parts.append(ToolCallPart(self.count, call.arguments, call.id, call.name))
            self.count += 1
            return call
        rest = call.arguments[len(announced.sent) :]  # `partial` only ever sent a prefix of them
        if rest:
            self._parts.append(ToolCallPart(announced.index, rest))
        return ToolCall(announced.id, call.name, call.arguments)


def _function_spec(tool: Mapping[str, Any]) -> Mapping[str, Any]:
    spec = tool.get("function", tool)  # normalize_tools checked that it is a mapping
    return spec if isinstance(spec, Mapping) else tool
