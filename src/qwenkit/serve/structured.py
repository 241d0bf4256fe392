"""Constrained output: JSON (a schema, or any object) and forced tool calls, as llama.cpp grammars."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from llama_cpp.llama_grammar import PRIMITIVE_RULES, SchemaConverter

from qwenkit.errors import BadRequest

ANY_OBJECT: dict[str, Any] = {"type": "object"}


_JSON_TYPES = {"string", "number", "integer", "boolean", "object", "array", "null"}


class InvalidSchema(ValueError):
    """A schema JSON Schema itself refuses (a `type` that is not one of its types)."""


class _Converter(SchemaConverter):
    """llama.cpp's JSON Schema to grammar converter, reading what it can.

    A (sub)schema the converter cannot read (only keywords it does not know, an external
    reference) constrains nothing: any JSON value may stand there, as JSON Schema itself ignores
    keywords it does not know; the rest of the schema is still enforced. A `type` that is not
    one of JSON Schema's is an error.
    """

    def __init__(self, **prop_order: int) -> None:
        super().__init__(prop_order=prop_order, allow_fetch=False, dotall=False, raw_pattern=False)

    def visit(self, schema: Any, name: str) -> str:
        kind = schema.get("type") if isinstance(schema, dict) else None
        kinds = kind if isinstance(kind, list) else [kind]
        if kind is not None and not all(isinstance(k, str) and k in _JSON_TYPES for k in kinds):
            raise InvalidSchema(f"{kind!r} is not a JSON Schema type")
        try:
            return super().visit(schema, name)
        except InvalidSchema:
            raise
        except Exception:  # the converter raises bare exceptions (assertions) on what it cannot read
            value = self._add_primitive("value", PRIMITIVE_RULES["value"])
            return value if name else self._add_rule("root", value)


def json_grammar(schema: dict[str, Any] | None) -> str:
    """A GBNF grammar accepting JSON text valid against `schema` (any object when None)."""
    converter = _Converter()
    try:
        converter.visit(converter.resolve_refs(schema or ANY_OBJECT, "schema"), "")
    except Exception as exc:  # resolving references can fail too
        raise BadRequest(f"unsupported JSON schema: {exc}") from None
    return converter.format_grammar()


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
    converter = _Converter(name=0, arguments=1)
    try:
        converter.visit(converter.resolve_refs(call_schema, "tools"), "call-body")
    except Exception as exc:
        raise BadRequest(f"unsupported tool parameter schema: {exc}") from None
    call = r'"<tool_call>\n" call-body "\n</tool_call>"'
    root = f'root ::= {call} ("\\n" {call})*' if several else f"root ::= {call}"
    return root + "\n" + converter.format_grammar()
