"""Qwen3-Coder XML calls (the format of every Qwen3.5 model too): `<function=NAME>` with one
`<parameter=ARG>\\nvalue\\n</parameter>` per argument; values are typed by the tool's JSON schema.

The body is read by one scanner, whole or unfinished, so what streams is always a prefix of the
final call: the call is announced once `<function=NAME>` is complete; a string parameter's key and
its text stream as they come (holding back what may still be markup), any other type's value once
the parameter closes. The first value given for a parameter counts. A parameter ends at its
`</parameter>`, or (when the model forgot it) where the next one starts or the function ends; the
function ends at its last `</function>`, which a frame closed by `</tool_call>` may lack, and
without which a frame the output ended in is no call (a truncated call).
"""

from __future__ import annotations

import ast
import functools
import json
import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

from qwenkit.chat.tags import WHITESPACE, held_suffix
from qwenkit.chat.tools.base import CLOSE, ToolCall, ToolParser, loads_json, new_call_id

_HEADER = re.compile(r"\s*<function=([^>\n]+)>")
_PARAMETER = re.compile(r"<parameter=([^>\n]+)>")
PARAMETER_OPEN, PARAMETER_CLOSE, FUNCTION_CLOSE = "<parameter=", "</parameter>", "</function>"
_MARKUP = (PARAMETER_CLOSE, PARAMETER_OPEN, FUNCTION_CLOSE, CLOSE)
_json = functools.partial(json.dumps, ensure_ascii=False)


class Qwen3CoderParser(ToolParser):
    """Calls as XML; values stay strings unless the tool's schema gives another type."""

    name = "qwen3_coder"

    def parse_call(self, body: str) -> ToolCall | None:
        scanned = self._scan(body, final=True)
        return None if scanned is None else ToolCall(new_call_id(), *scanned)

    def parse_unclosed(self, body: str) -> ToolCall | None:
        return self.parse_call(body) if body.rstrip(WHITESPACE).endswith(FUNCTION_CLOSE) else None

    def partial(self, body: str) -> tuple[str, str] | None:
        return self._scan(body, final=False)

    @classmethod
    def call_grammar(cls, tools: Sequence[Mapping[str, Any]], *, several: bool) -> str:
        """A GBNF grammar forcing an XML call of one of `tools` (function specs), or several calls.

        Each call is `<tool_call>\\n<function=NAME>\\n` and its parameters, `<parameter=KEY>\\nVALUE\\n
        </parameter>\\n` each: the required ones in the schema's order, then any optional ones, in
        order; a tool without properties takes any parameters. Values follow their schema's type
        (`enum`, `const`, `maxLength` included); nested objects and arrays are any JSON of that kind.
        """
        rules: list[str] = []
        functions: list[str] = []
        for i, tool in enumerate(tools):
            parameters = _mapping(tool.get("parameters"))
            properties = _mapping(parameters.get("properties"))
            required = [key for key in parameters.get("required") or () if key in properties]
            args: list[str] = []
            for j, (key, schema) in enumerate(properties.items()):
                rule = f"fn{i}-p{j}"
                value = _value_rule(_mapping(schema))
                rules.append(f'{rule} ::= "<parameter=" {_literal(key)} ">\\n" {value} "\\n</parameter>\\n"')
                args.append(rule if key in required else f"{rule}?")
            args.sort(key=lambda rule: rule.endswith("?"))  # required first, each group in the schema's order
            if not properties:
                args = ['("<parameter=" [^>\\n]+ ">\\n" xml-char* "\\n</parameter>\\n")*']
            name = _literal(str(tool["name"]))
            rules.append(f'fn{i} ::= "<function=" {name} ">\\n" {" ".join(args)} "</function>\\n"')
            functions.append(f"fn{i}")
        call = f'"<tool_call>\\n" ({" | ".join(functions)}) "</tool_call>"'
        root = f'root ::= {call} ("\\n" {call})*' if several else f"root ::= {call}"
        return "\n".join([root, *rules, _VALUE_RULES])

    def _scan(self, body: str, final: bool) -> tuple[str, str] | None:
        """(name, arguments JSON text) of a whole body, or of the part of an unfinished one that
        is settled; None before a complete `<function=NAME>`."""
        header = _HEADER.match(body)
        name = header.group(1).strip() if header else ""
        if not header or not name:
            return None
        rest = body[header.end() :]
        end = rest.rfind(FUNCTION_CLOSE) if final else rest.find(FUNCTION_CLOSE)
        rest = rest if end < 0 else rest[:end]
        properties = _mapping(_mapping(_mapping(self.tools.get(name)).get("parameters")).get("properties"))
        pieces: list[str] = []
        seen: set[str] = set()
        at = 0
        while (opened := _PARAMETER.search(rest, at)) is not None:
            key, start = opened.group(1).strip(), opened.end()
            ends = [i for i in (rest.find(PARAMETER_CLOSE, start), rest.find(PARAMETER_OPEN, start)) if i >= 0]
            stop = min(ends) if ends else len(rest)
            raw = rest[start:stop]
            at = stop + (len(PARAMETER_CLOSE) if rest.startswith(PARAMETER_CLOSE, stop) else 0)
            if key in seen:
                continue
            schema = _mapping(properties.get(key))
            if ends or final:
                seen.add(key)
                pieces.append(f"{_json(key)}: {_json(convert_value(_unwrap(raw), schema))}")
                continue
            if _is_text(schema):  # its key and the text so far, the closing quote still open
                pieces.append(f"{_json(key)}: {_json(_settled(raw))[:-1]}")
            return name, "{" + ", ".join(pieces)
        return name, "{" + ", ".join(pieces) + ("}" if final else "")


def _unwrap(raw: str) -> str:
    """A parameter's value: the newlines after its opening and before its closing tag are markup."""
    value = raw[1:] if raw.startswith("\n") else raw
    return value[:-1] if value.endswith("\n") else value


def _settled(raw: str) -> str:
    """The part of an unfinished value that stays whatever follows: a possible tag at its end,
    and the newline before it, are held back."""
    value = raw[1:] if raw.startswith("\n") else raw
    value = value[: len(value) - max(held_suffix(value, tag) for tag in _MARKUP)]
    return value[:-1] if value.endswith("\n") else value


def _is_text(schema: Mapping[str, Any]) -> bool:
    """A value `convert_value` keeps as the string itself, whatever it reads."""
    return set(_types(schema)) <= {"string"}


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


# ----- forcing a call: the format as a GBNF grammar ----------------------------------------------

# A string value: any text without `</` (which would start the markup), as many characters as
# `maxLength` allows. JSON values by the grammar of llama.cpp's `grammars/json.gbnf`.
_VALUE_RULES = r"""xml-char ::= [^<] | "<" [^/<]
json-value ::= json-object | json-array | json-string | json-number | ("true" | "false" | "null")
json-object ::= "{" ws (json-string ws ":" ws json-value ws ("," ws json-string ws ":" ws json-value ws)*)? "}"
json-array ::= "[" ws (json-value ws ("," ws json-value ws)*)? "]"
json-string ::= "\"" ([^"\\\x7F\x00-\x1F] | "\\" (["\\/bfnrt] | "u" [0-9a-fA-F]{4}))* "\""
json-number ::= "-"? ([0-9] | [1-9] [0-9]*) ("." [0-9]+)? ([eE] [-+]? [0-9]+)?
json-integer ::= "-"? ([0-9] | [1-9] [0-9]*)
ws ::= [ \t\n]*"""
_TYPED = {
    "integer": "json-integer",
    "number": "json-number",
    "boolean": '("true" | "false")',
    "null": '"null"',
    "object": "json-object",
    "array": "json-array",
}


def _literal(text: str) -> str:
    """A GBNF string literal (JSON's escapes are GBNF's)."""
    return json.dumps(text)


def _value_rule(schema: Mapping[str, Any]) -> str:
    """The GBNF expression of a parameter value as the XML format writes it for `schema`."""
    choices = schema.get("enum", [schema["const"]] if "const" in schema else None)
    if isinstance(choices, list) and choices:
        return "(" + " | ".join(_literal(c if isinstance(c, str) else _json(c)) for c in choices) + ")"
    types = _types(schema)
    if not types or "string" in types:
        most = schema.get("maxLength")
        return f"xml-char{{0,{most}}}" if isinstance(most, int) and most >= 0 else "xml-char*"
    return "(" + " | ".join(_TYPED.get(kind, "json-value") for kind in types) + ")"
