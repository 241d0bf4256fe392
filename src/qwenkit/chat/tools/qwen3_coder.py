"""Qwen3-Coder XML calls: `<function=NAME>` with one `<parameter=ARG>\\nvalue\\n</parameter>` per
argument; values are typed by the tool's JSON schema."""

from __future__ import annotations

import ast
import json
import math
import re
from collections.abc import Mapping
from typing import Any

from qwenkit.chat.tools.base import ToolCall, ToolParser, loads_json

_FUNCTION = re.compile(r"<function=([^>\n]+)>(.*)</function>", re.S)
# a parameter ends at its closing tag, or (when the model forgot it) where the next one starts
_PARAMETER = re.compile(r"<parameter=([^>\n]+)>(.*?)(?:</parameter>|(?=<parameter=)|\Z)", re.S)


class Qwen3CoderParser(ToolParser):
    """Calls as XML; values stay strings unless the tool's schema gives another type."""

    name = "qwen3_coder"

    def parse_call(self, body: str) -> ToolCall | None:
        match = _FUNCTION.fullmatch(body.strip())
        if not match:
            return None
        name = match.group(1).strip()
        properties = _mapping(_mapping(self.tools.get(name)).get("parameters")).get("properties")
        args = {}
        for key, raw in _PARAMETER.findall(match.group(2)):
            key = key.strip()
            value = raw[1:] if raw.startswith("\n") else raw
            value = value[:-1] if value.endswith("\n") else value
            args[key] = convert_value(value, _mapping(properties).get(key))
        return ToolCall.new(name, args)


def convert_value(value: str, schema: Mapping[str, Any] | None) -> Any:
    """`value` as its JSON-schema type; the string itself when it does not fit or is untyped."""
    types = _types(_mapping(schema))
    text = value.strip()
    if text == "null" and types and ("null" in types or "string" not in types):
        return None
    if not types or "string" in types:
        return value
    for kind in types:
        try:
            if kind == "integer":
                return int(text)
            if kind == "number":
                number = float(text)
                if math.isfinite(number):
                    return int(text) if re.fullmatch(r"[-+]?\d+", text) else number
            if kind == "boolean" and text.lower() in ("true", "false"):
                return text.lower() == "true"
            if kind in ("object", "array"):
                parsed = _structured(text)
                if isinstance(parsed, dict if kind == "object" else list):
                    return parsed
        except ValueError:
            continue
    return value


def _types(schema: Mapping[str, Any]) -> list[str]:
    kind = schema.get("type")
    if isinstance(kind, str):
        return [kind]
    if isinstance(kind, list):
        return [k for k in kind if isinstance(k, str)]
    options = schema.get("anyOf") or schema.get("oneOf") or ()
    return [k for option in options for k in _types(_mapping(option))]


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _structured(text: str) -> Any:
    try:
        return loads_json(text)
    except ValueError:
        pass
    try:  # models sometimes write Python literals ({'a': True}); keep only what JSON can hold
        return loads_json(json.dumps(ast.literal_eval(text)))
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return None
