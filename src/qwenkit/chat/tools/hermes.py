"""Hermes-style calls (Qwen2.5, Qwen3, QwQ): `<tool_call>\\n{"name": ..., "arguments": {...}}\\n</tool_call>`."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

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

    @classmethod
    def call_grammar(cls, tools: Sequence[Mapping[str, Any]], *, several: bool) -> str:
        """Each call `<tool_call>\\n{"name": ..., "arguments": {...}}\\n</tool_call>`, its arguments
        valid against that tool's parameter schema."""
        from qwenkit.chat.grammar import ANY_OBJECT, schema_rules  # loads llama_cpp: not at the CLI's start

        call_schema = {
            "anyOf": [
                {
                    "type": "object",
                    "properties": {
                        "name": {"const": tool["name"]},
                        "arguments": tool.get("parameters") or ANY_OBJECT,
                    },
                    "required": ["name", "arguments"],
                }
                for tool in tools
            ]
        }
        body = schema_rules(
            call_schema, "call-body", source="tools", what="tool parameter schema", order=("name", "arguments")
        )
        call = r'"<tool_call>\n" call-body "\n</tool_call>"'
        root = f'root ::= {call} ("\\n" {call})*' if several else f"root ::= {call}"
        return root + "\n" + body
