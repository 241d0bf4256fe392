"""GBNF (the grammar `SamplingParams.grammar` carries) to the Lark dialect of llguidance.

ONNX Runtime GenAI constrains output through llguidance, compiled into its CPU wheel, which reads
JSON schemas, regexes and Lark grammars, not llama.cpp's GBNF. The grammars qwenkit makes (JSON
schemas and forced tool calls, `chat/grammar.py` and `chat/tools/`) are GBNF, so they are rewritten here:
`name ::= body` becomes `name: body` (names made Lark-safe, `root` becomes `start`), character
classes and `.` become regex terminals, strings are re-quoted as JSON strings; alternation,
grouping and the repetition operators (`? * + {m,n}`) are the same in both.
"""

from __future__ import annotations

import json
import re

from qwenkit.errors import BadRequest

_TOKEN = re.compile(
    r"""
    (?P<space>[ \t\r\n]+|\#[^\n]*)
  | (?P<define>::=)
  | (?P<string>"(?:\\.|[^"\\])*")
  | (?P<cls>\[(?:\\.|[^\]\\])*\])
  | (?P<name>[A-Za-z0-9_-]+)
  | (?P<repeat>\{\s*\d*\s*(?:,\s*\d*\s*)?\})
  | (?P<op>[()|?*+.])
    """,
    re.VERBOSE,
)
_ESCAPES = {"n": "\n", "r": "\r", "t": "\t", "\\": "\\", '"': '"', "[": "[", "]": "]"}


def gbnf_to_lark(gbnf: str) -> str:
    """The llguidance Lark grammar equivalent to `gbnf` (whose start rule is `root`)."""
    tokens = _tokenize(gbnf)
    rules: list[tuple[str, list[str]]] = []
    i = 0
    while i < len(tokens):
        kind, text = tokens[i]
        if kind == "name" and i + 1 < len(tokens) and tokens[i + 1][0] == "define":
            rules.append((_rule_name(text), []))
            i += 2
            continue
        if not rules:
            raise BadRequest(f"bad grammar: expected a rule definition, found {text!r}")
        rules[-1][1].append(_convert(kind, text))
        i += 1
    if not any(name == "start" for name, _ in rules):
        raise BadRequest("bad grammar: no root rule")
    empty = '""'
    return "\n".join(f"{name}: {' '.join(body) or empty}" for name, body in rules) + "\n"


def _tokenize(gbnf: str) -> list[tuple[str, str]]:
    tokens: list[tuple[str, str]] = []
    at = 0
    while at < len(gbnf):
        match = _TOKEN.match(gbnf, at)
        if match is None:
            raise BadRequest(f"bad grammar near {gbnf[at : at + 20]!r}")
        at = match.end()
        kind = match.lastgroup or ""
        if kind != "space":
            tokens.append((kind, match.group()))
    return tokens


def _rule_name(name: str) -> str:
    return "start" if name == "root" else "r_" + name.replace("-", "_").lower()


def _convert(kind: str, text: str) -> str:
    if kind == "name":
        return _rule_name(text)
    if kind == "string":
        return json.dumps(_unescape(text[1:-1]), ensure_ascii=False)
    if kind == "cls":
        return "/" + text.replace("/", "\\/") + "/"
    if kind == "op" and text == ".":
        return r"/(?s:.)/"
    if kind == "repeat":
        return re.sub(r"\s+", "", text)
    return text


def _unescape(body: str) -> str:
    """GBNF string escapes (\\n \\t \\" \\\\ \\xHH \\uHHHH \\UHHHHHHHH) to the characters."""
    out: list[str] = []
    i = 0
    while i < len(body):
        c = body[i]
        if c != "\\" or i + 1 >= len(body):
            out.append(c)
            i += 1
            continue
        e = body[i + 1]
        width = {"x": 2, "u": 4, "U": 8}.get(e)
        if width:
            out.append(chr(int(body[i + 2 : i + 2 + width], 16)))
            i += 2 + width
        else:
            out.append(_ESCAPES.get(e, e))
            i += 2
    return "".join(out)
