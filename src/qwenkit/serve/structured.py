"""Constrained output: JSON (a schema, or any object) and forced tool calls, as llama.cpp grammars."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from llama_cpp.llama_grammar import SchemaConverter, json_schema_to_gbnf

from qwenkit.errors import BadRequest

ANY_OBJECT: dict[str, Any] = {"type": "object"}


def json_grammar(schema: dict[str, Any] | None) -> str:
    """A GBNF grammar accepting JSON text valid against `schema` (any object when None)."""
    try:
        return json_schema_to_gbnf(json.dumps(schema or ANY_OBJECT))
    except Exception as exc:  # the converter raises bare exceptions on unsupported schemas
        raise BadRequest(f"unsupported JSON schema: {exc}") from None


def hermes_call_grammar(tools: Sequence[dict[str, Any]], *, several: bool) -> str:
    """A grammar forcing Qwen's Hermes tool-call markup for one of `tools` (or several calls).

    Each call is `<tool_call>\\n{"name": ..., "arguments": {...}}\\n</tool_call>` with the
    arguments valid against that tool's parameter schema.
    """
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
    converter = SchemaConverter(
        prop_order={"name": 0, "arguments": 1}, allow_fetch=False, dotall=False, raw_pattern=False
    )
    try:
        converter.visit(converter.resolve_refs(call_schema, "tools"), "call-body")
    except Exception as exc:
        raise BadRequest(f"unsupported tool parameter schema: {exc}") from None
    call = r'"<tool_call>\n" call-body "\n</tool_call>"'
    root = f'root ::= {call} ("\\n" {call})*' if several else f"root ::= {call}"
    return root + "\n" + converter.format_grammar()
