"""Hermes-style calls (Qwen2.5, Qwen3, QwQ): `<tool_call>\\n{"name": ..., "arguments": {...}}\\n</tool_call>`."""

from __future__ import annotations

from qwenkit.chat.tools.base import ToolCall, ToolParser, loads_json


class HermesParser(ToolParser):
    """A JSON object with a `name` and an `arguments` object (a JSON string of one is accepted)."""

    name = "hermes"

    def parse_call(self, body: str) -> ToolCall | None:
        try:
            obj = loads_json(body)
            args = obj.get("arguments", {}) if isinstance(obj, dict) else None
            if isinstance(args, str):
                args = loads_json(args)
        except ValueError:
            return None
        if not isinstance(args, dict) or not isinstance(obj.get("name"), str) or not obj["name"]:
            return None
        return ToolCall.new(obj["name"], args)
