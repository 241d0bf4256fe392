"""Tool calls framed by `<tool_call>` ... `</tool_call>`: the streaming part every format shares.

Text outside the frames is content, emitted as soon as it cannot be the start of a frame;
whitespace touching a frame belongs to the markup. A frame whose body the format cannot parse
is given back verbatim as content. At the end of the output an unclosed frame is accepted when
its body is already a complete call, and is otherwise given back as content with `truncated`
set. Nothing raises on model output.
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


class ToolParser:
    """Streaming splitter of answer text into content and tool calls; subclasses parse bodies."""

    name: ClassVar[str]

    def __init__(self, tools: Sequence[Mapping[str, Any]] | None = None) -> None:
        self.tools = {spec["name"]: spec for spec in map(_function_spec, normalize_tools(tools) or ())}
        self.truncated = False
        self._buf = ""
        self._pad = ""  # whitespace held back before an open frame
        self._in_call = False
        self._after_call = False

    def parse_call(self, body: str) -> ToolCall | None:
        """The call a frame's body holds, or None when it is not one."""
        raise NotImplementedError

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
                    break
                body = buf if at < 0 else buf[:at]
                call = self.parse_call(body)
                if call:
                    calls.append(call)
                    self._after_call = True
                else:
                    content.append(self._pad + OPEN + body + ("" if at < 0 else CLOSE))
                    self.truncated = self.truncated or at < 0
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


def _function_spec(tool: Mapping[str, Any]) -> Mapping[str, Any]:
    spec = tool.get("function", tool)  # normalize_tools checked that it is a mapping
    return spec if isinstance(spec, Mapping) else tool
