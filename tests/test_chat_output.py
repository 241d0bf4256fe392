"""Tool-call parsing and the combined output parser: streamed at every split = one-shot = expected."""

from __future__ import annotations

import json
import random

import pytest

from qwenkit.chat import ChatTemplate, OutputParser, official_template, parser_for, tool_format
from qwenkit.chat.tools import HermesParser, Qwen3CoderParser, forced_call_grammar
from qwenkit.chat.tools.qwen3_coder import convert_value
from qwenkit.errors import BadRequest

QUERY_TOOL = {
    "type": "function",
    "function": {
        "name": "run_query",
        "parameters": {
            "type": "object",
            "properties": {
                "sql": {"type": "string"},
                "limit": {"type": "integer"},
                "ratio": {"type": "number"},
                "dry_run": {"type": "boolean"},
                "tags": {"type": "array", "items": {"type": "string"}},
                "options": {"type": "object"},
                "note": {"type": ["string", "null"]},
                "maybe": {"anyOf": [{"type": "integer"}, {"type": "null"}]},
            },
        },
    },
}


def hermes(name: str, args) -> str:
    return f"<tool_call>\n{json.dumps({'name': name, 'arguments': args}, ensure_ascii=False)}\n</tool_call>"


def xml(name: str, **params: str) -> str:
    body = "".join(f"<parameter={k}>\n{v}\n</parameter>\n" for k, v in params.items())
    return f"<tool_call>\n<function={name}>\n{body}</function>\n</tool_call>"


PARIS = hermes("get_weather", {"city": "Paris"})
ROME = hermes("get_weather", {"city": "Rome"})

# (output, starts_in_thinking, format, expected reasoning, content, [(name, arguments)], truncated)
CORPUS = [
    ("Let me check.\n" + PARIS, False, "hermes", "", "Let me check.", [("get_weather", {"city": "Paris"})], False),
    (
        PARIS + "\n" + ROME,
        False,
        "hermes",
        "",
        "",
        [("get_weather", {"city": "Paris"}), ("get_weather", {"city": "Rome"})],
        False,
    ),
    (PARIS + "\nI called it.", False, "hermes", "", "I called it.", [("get_weather", {"city": "Paris"})], False),
    (
        'Sure.\n<tool_call>\n{"name": "get_weather", "argu',
        False,
        "hermes",
        "",
        'Sure.\n<tool_call>\n{"name": "get_weather", "argu',
        [],
        True,
    ),
    ("Hi <tool_call>", False, "hermes", "", "Hi <tool_call>", [], True),
    ("Hi <tool_ca", False, "hermes", "", "Hi <tool_ca", [], False),
    (
        "<tool_call>\n{name: get_weather}\n</tool_call>\nDone.",
        False,
        "hermes",
        "",
        "<tool_call>\n{name: get_weather}\n</tool_call>\nDone.",
        [],
        False,
    ),
    (
        '<tool_call>\n{"name": "f", "arguments": {"x": NaN}}\n</tool_call>',
        False,
        "hermes",
        "",
        '<tool_call>\n{"name": "f", "arguments": {"x": NaN}}\n</tool_call>',
        [],
        False,
    ),
    ('<tool_call>\n{"name": "get_time", "arguments": {}}\n', False, "hermes", "", "", [("get_time", {})], False),
    (
        '<tool_call>\n{"name": "f", "arguments": "{\\"a\\": 1}"}\n</tool_call>',
        False,
        "hermes",
        "",
        "",
        [("f", {"a": 1})],
        False,
    ),
    ('<tool_call>\n{"name": "f"}\n</tool_call>', False, "hermes", "", "", [("f", {})], False),
    (
        hermes("get_weather", {"city": "Zürich 🏔"}),
        False,
        "hermes",
        "",
        "",
        [("get_weather", {"city": "Zürich 🏔"})],
        False,
    ),
    (
        "I could call " + PARIS + " but no.\n</think>\n\nNo call needed.",
        True,
        "hermes",
        "I could call " + PARIS + " but no.",
        "No call needed.",
        [],
        False,
    ),
    (
        "<think>\nNeed weather.\n</think>\n\n" + PARIS,
        True,
        "hermes",
        "Need weather.",
        "",
        [("get_weather", {"city": "Paris"})],
        False,
    ),
    ("Thinking " + PARIS[:20], True, "hermes", "Thinking " + PARIS[:20], "", [], False),
    ("Need it.\n</think>\n\n" + PARIS[:30], True, "hermes", "Need it.", PARIS[:30], [], True),
    ("Plain " + PARIS, False, None, "", "Plain " + PARIS, [], False),
    (
        xml(
            "run_query", sql="SELECT 1;", limit="10", ratio="0.5", dry_run="True", tags='["a", "b"]', options='{"x": 1}'
        ),
        False,
        "qwen3_coder",
        "",
        "",
        [
            (
                "run_query",
                {
                    "sql": "SELECT 1;",
                    "limit": 10,
                    "ratio": 0.5,
                    "dry_run": True,
                    "tags": ["a", "b"],
                    "options": {"x": 1},
                },
            )
        ],
        False,
    ),
    (
        "Running it.\n\n"
        + xml("run_query", sql="SELECT *\nFROM t\n", limit="ten", ratio="3")
        + "\n"
        + xml("other", limit="42"),
        False,
        "qwen3_coder",
        "",
        "Running it.",
        [("run_query", {"sql": "SELECT *\nFROM t\n", "limit": "ten", "ratio": 3}), ("other", {"limit": "42"})],
        False,
    ),
    (
        xml("run_query", note="null", maybe="null", sql="null", options="{'a': True, 'b': None}"),
        False,
        "qwen3_coder",
        "",
        "",
        [("run_query", {"note": None, "maybe": None, "sql": "null", "options": {"a": True, "b": None}})],
        False,
    ),
    (
        "<tool_call>\n<function=f>\n<parameter=a>\n1\n<parameter=b>\n2\n</function>\n</tool_call>",
        False,
        "qwen3_coder",
        "",
        "",
        [("f", {"a": "1", "b": "2"})],
        False,
    ),
    (
        "<tool_call>\n<function=run_query>\n<parameter=sql>\nSEL",
        False,
        "qwen3_coder",
        "",
        "<tool_call>\n<function=run_query>\n<parameter=sql>\nSEL",
        [],
        True,
    ),
    (
        "<tool_call>\nrun_query(sql=1)\n</tool_call>",
        False,
        "qwen3_coder",
        "",
        "<tool_call>\nrun_query(sql=1)\n</tool_call>",
        [],
        False,
    ),
    (
        "Plan: " + xml("run_query", limit="1") + "\n</think>\n\n" + xml("run_query", limit="2"),
        True,
        "qwen3_coder",
        "Plan: " + xml("run_query", limit="1"),
        "",
        [("run_query", {"limit": 2})],
        False,
    ),
]


def piecewise(text: str) -> list[list[str]]:
    out = [[text[:i], text[i:]] for i in range(len(text) + 1)]
    out.append(list(text))
    rng = random.Random(len(text))
    for _ in range(5):
        cuts = sorted(rng.sample(range(len(text) + 1), min(len(text) + 1, 5)))
        out.append([text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)], strict=False)])
    return out


def summary(reasoning: str, content: str, calls, truncated: bool):
    return reasoning, content, [(c.name, json.loads(c.arguments)) for c in calls], truncated


def stream(pieces: list[str], starts: bool, fmt: str | None):
    parser = OutputParser(starts, fmt, [QUERY_TOOL])
    reasoning, content, calls = "", "", []
    for delta in [parser.feed(p) for p in pieces] + [parser.finish()]:
        reasoning, content, calls = reasoning + delta.reasoning, content + delta.content, calls + delta.tool_calls
    return summary(reasoning, content, calls, parser.truncated_tool_call)


@pytest.mark.parametrize(("text", "starts", "fmt", "reasoning", "content", "calls", "truncated"), CORPUS)
def test_corpus_streamed_at_every_split_equals_one_shot(text, starts, fmt, reasoning, content, calls, truncated):
    want = (reasoning, content, calls, truncated)
    parsed = OutputParser(starts, fmt, [QUERY_TOOL]).parse(text)
    assert summary(parsed.reasoning, parsed.content, parsed.tool_calls, parsed.truncated_tool_call) == want
    for pieces in piecewise(text):
        assert stream(pieces, starts, fmt) == want, pieces


def test_random_outputs_stream_like_one_shot() -> None:
    rng = random.Random(1)
    atoms = [
        "<think>",
        "</think>",
        "<tool_call>",
        "</tool_call>",
        "<tool_",
        "\n",
        " ",
        "x",
        "{",
        "}",
        '{"name": "f", "arguments": {}}',
        "<function=f>",
        "</function>",
        "<parameter=a>",
        "</parameter>",
    ]
    for _ in range(300):
        text = "".join(rng.choice(atoms) for _ in range(rng.randint(0, 12)))
        for starts in (False, True):
            for fmt in ("hermes", "qwen3_coder"):
                parsed = OutputParser(starts, fmt).parse(text)
                want = summary(parsed.reasoning, parsed.content, parsed.tool_calls, parsed.truncated_tool_call)
                for pieces in piecewise(text)[:: max(1, len(text) // 4)]:
                    assert stream(pieces, starts, fmt) == want, (pieces, starts, fmt)


def test_deltas_are_emitted_as_early_as_possible() -> None:
    parser = OutputParser(False, "hermes")
    assert parser.feed("Hello wor").content == "Hello wor"
    delta = parser.feed("ld.\n<tool")
    assert delta.content == "ld." and not delta.tool_calls
    assert not parser.feed('_call>\n{"name": "f", "arguments": {"a": 1}}\n</tool_')
    done = parser.feed("call>")
    assert [(c.name, c.arguments) for c in done.tool_calls] == [("f", '{"a": 1}')] and done.content == ""
    assert not parser.finish() and not parser.truncated_tool_call


def test_hostile_bodies_never_raise() -> None:
    deep = "[" * 100_000
    tools = [
        {
            "type": "function",
            "function": {"name": "f", "parameters": {"type": "object", "properties": {"o": {"type": "object"}}}},
        }
    ]
    text = '<tool_call>\n{"name": "f", "arguments": ' + deep + "}\n</tool_call>"
    assert OutputParser(False, "hermes", tools).parse(text).content == text
    text = "<tool_call>\n<function=f>\n<parameter=o>\n" + deep + "\n</parameter>\n</function>\n</tool_call>"
    [call] = OutputParser(False, "qwen3_coder", tools).parse(text).tool_calls
    assert json.loads(call.arguments) == {"o": deep}


def test_call_ids_and_openai_shape() -> None:
    calls = OutputParser(False, "hermes").parse(PARIS + ROME).tool_calls
    assert len({c.id for c in calls}) == 2 and all(c.id.startswith("call_") and len(c.id) > 10 for c in calls)
    assert calls[0].to_openai() == {
        "id": calls[0].id,
        "type": "function",
        "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
    }
    assert calls[1].to_openai(index=1)["index"] == 1


def test_parse_leaves_streaming_state_alone() -> None:
    parser = OutputParser(True, "hermes")
    parser.feed("half a thought")
    assert parser.parse("x</think>\n\ny").content == "y"
    assert parser.finish().reasoning == ""


@pytest.mark.parametrize(
    ("value", "schema", "converted"),
    [
        ("7", {"type": "integer"}, 7),
        ("-7", {"type": "number"}, -7),
        ("1e3", {"type": "number"}, 1000.0),
        ("nan", {"type": "number"}, "nan"),
        ("7.5", {"type": "integer"}, "7.5"),
        ("false", {"type": "boolean"}, False),
        ("yes", {"type": "boolean"}, "yes"),
        ("[1, 2]", {"type": "array"}, [1, 2]),
        ('{"a": 1}', {"type": "array"}, '{"a": 1}'),
        ("{1, 2}", {"type": "object"}, "{1, 2}"),
        (" 42 ", {"type": "string"}, " 42 "),
        ("42", None, "42"),
        ("42", {"type": ["null", "integer"]}, 42),
        ("null", {"type": "integer"}, None),
    ],
)
def test_xml_value_conversion(value, schema, converted) -> None:
    assert convert_value(value, schema) == converted


def test_registry() -> None:
    assert isinstance(parser_for("hermes"), HermesParser)
    assert isinstance(parser_for("qwen3-coder"), Qwen3CoderParser)
    assert isinstance(parser_for(official_template("qwen3-coder")), Qwen3CoderParser)
    for name in ("qwen2.5", "qwen3", "qwq"):
        assert tool_format(official_template(name)) == "hermes"
    assert parser_for(ChatTemplate("{{ messages[0].content }}")) is None
    with pytest.raises(BadRequest, match="unknown tool-call format"):
        parser_for("pythonic")
    with pytest.raises(BadRequest):
        OutputParser(False, "hermes", tools=[{"type": "function"}])


def test_forced_calls_are_asked_of_the_templates_format() -> None:
    spec = [QUERY_TOOL["function"]]
    one = forced_call_grammar(official_template("qwen3"), spec, several=False)
    assert one is not None and one.startswith('root ::= "<tool_call>\\n" call-body "\\n</tool_call>"\n')
    assert '"\\"run_query\\""' in one and "dry-run" in one  # the name and the parameter schema
    several = forced_call_grammar(official_template("qwen2.5"), spec, several=True)
    assert several is not None and several.splitlines()[0].endswith(")*")
    # no markup in the template: Hermes, Qwen's default; Qwen3-Coder's XML calls are not enforced
    assert forced_call_grammar(ChatTemplate("{{ messages[0].content }}"), spec, several=False) == one
    assert forced_call_grammar(official_template("qwen3-coder"), spec, several=False) is None
