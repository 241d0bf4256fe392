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
    # cut off by max_tokens inside a multi-line value: no call; the text stays in the content
    (
        "Writing.\n<tool_call>\n<function=run_query>\n<parameter=sql>\nSELECT *\nFROM t\nWHE",
        False,
        "qwen3_coder",
        "",
        "Writing.\n<tool_call>\n<function=run_query>\n<parameter=sql>\nSELECT *\nFROM t\nWHE",
        [],
        True,
    ),
    (
        "<tool_call>\n<function=run_query>\n<parameter=limit>\n1",
        False,
        "qwen3_coder",
        "",
        "<tool_call>\n<function=run_query>\n<parameter=limit>\n1",
        [],
        True,
    ),
    (
        "<tool_call>\n<function=run_query>\n",
        False,
        "qwen3_coder",
        "",
        "<tool_call>\n<function=run_query>\n",
        [],
        True,
    ),
    (  # complete up to </function>, only </tool_call> cut off: a call
        xml("run_query", limit="3").removesuffix("\n</tool_call>"),
        False,
        "qwen3_coder",
        "",
        "",
        [("run_query", {"limit": 3})],
        False,
    ),
    # JSON values over several lines; code with < and </ that is no markup; a value's own newlines
    (
        xml(
            "run_query",
            options='{\n  "where": {"a": [1, 2]},\n  "s": "x\\ny"\n}',
            tags='[\n  "a",\n  "b"\n]',
            sql="if a < b:\n    print('</div>')\n\n",
        ),
        False,
        "qwen3_coder",
        "",
        "",
        [
            (
                "run_query",
                {
                    "options": {"where": {"a": [1, 2]}, "s": "x\ny"},
                    "tags": ["a", "b"],
                    "sql": "if a < b:\n    print('</div>')\n\n",
                },
            )
        ],
        False,
    ),
    (  # </function> forgotten inside a closed frame; a repeated parameter: the first value counts
        "<tool_call>\n<function=f>\n<parameter=a>\nx\n</parameter>\n<parameter=a>\ny\n</parameter>\n</tool_call>",
        False,
        "qwen3_coder",
        "",
        "",
        [("f", {"a": "x"})],
        False,
    ),
    (  # prompt-opened thinking, then the call after </think>, text between calls
        "Weather first.\n</think>\n\nChecking.\n" + xml("get_weather", city="Paris") + "\nAnd\n" + xml("f"),
        True,
        "qwen3_coder",
        "Weather first.",
        "Checking.And",
        [("get_weather", {"city": "Paris"}), ("f", {})],
        False,
    ),
    (  # called from inside thinking that never closed: the call is still made
        "I need the weather.\n" + xml("get_weather", city="Paris"),
        True,
        "qwen3_coder",
        "I need the weather.\n" + xml("get_weather", city="Paris"),
        "",
        [("get_weather", {"city": "Paris"})],
        False,
    ),
    (
        "Need it.\n" + PARIS + "\n" + xml("x")[:25],
        True,
        "hermes",
        "Need it.\n" + PARIS + "\n" + xml("x")[:25],
        "",
        [("get_weather", {"city": "Paris"})],
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
    """The summary of a streamed parse, after checking that its streaming parts add up to its
    calls: per index, the first part has the call's id and name, and the pieces join to its
    arguments; a call cut off leaves parts whose arguments never close."""
    parser = OutputParser(starts, fmt, [QUERY_TOOL])
    reasoning, content, calls, parts = "", "", [], []
    for delta in [parser.feed(p) for p in pieces] + [parser.finish()]:
        reasoning, content, calls = reasoning + delta.reasoning, content + delta.content, calls + delta.tool_calls
        content += delta.unfinished_call
        parts += delta.tool_call_parts
    streamed = assemble(parts)
    assert [streamed[i] for i in range(len(calls))] == [(c.id, c.name, c.arguments) for c in calls]
    for cut in range(len(calls), len(streamed)):  # announced, then cut off: never valid JSON
        assert parser.truncated_tool_call
        with pytest.raises(json.JSONDecodeError):
            json.loads(streamed[cut][2])
    return summary(reasoning, content, calls, parser.truncated_tool_call)


def assemble(parts) -> dict[int, tuple[str, str, str]]:
    """OpenAI tool_calls deltas accumulated as a client does: (id, name, arguments) per index."""
    calls: dict[int, tuple[str, str, str]] = {}
    for part in parts:
        if part.index not in calls:
            assert part.id and part.name, part
            calls[part.index] = (part.id, part.name, "")
        else:
            assert part.id is None and part.name is None
        call_id, name, arguments = calls[part.index]
        calls[part.index] = (call_id, name, arguments + part.arguments)
    assert sorted(calls) == list(range(len(calls)))
    return calls


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


def test_xml_call_streams_name_first_then_its_arguments() -> None:
    parser = OutputParser(False, "qwen3_coder", [QUERY_TOOL])
    assert not parser.feed("<tool_call>\n<function=run_q").tool_call_parts
    head, first = parser.feed("uery>\n<parameter=sql>\nSELECT *\n").tool_call_parts
    assert (head.index, head.name, head.arguments) == (0, "run_query", "") and head.id.startswith("call_")
    assert (first.index, first.id, first.name, first.arguments) == (0, None, None, '{"sql": "SELECT *')
    pieces = [
        parser.feed(text).tool_call_parts for text in ("FROM t", "\n</param", "eter>\n", "<parameter=limit>\n5\n")
    ]
    assert [[p.arguments for p in ps] for ps in pieces] == [["\\nFROM t"], [], ['"'], []]
    last = parser.feed("</parameter>\n</function>\n</tool_call>")
    assert [p.arguments for p in last.tool_call_parts] == [', "limit": 5}']
    [call] = last.tool_calls
    assert (call.id, call.arguments) == (head.id, '{"sql": "SELECT *\\nFROM t", "limit": 5}')
    assert call.to_openai(0)["function"]["arguments"] == call.arguments
    assert head.to_openai() == {
        "index": 0,
        "id": head.id,
        "type": "function",
        "function": {"name": "run_query", "arguments": ""},
    }
    assert first.to_openai() == {"index": 0, "function": {"arguments": '{"sql": "SELECT *'}}


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
    for name in ("qwen2.5", "qwen3", "qwq", "qwen3-next", "qwen3-next-thinking"):
        assert tool_format(official_template(name)) == "hermes"
    assert tool_format(official_template("qwen3.5")) == "qwen3_coder"  # XML for every Qwen3.5 model
    assert parser_for(ChatTemplate("{{ messages[0].content }}")) is None
    with pytest.raises(BadRequest, match="unknown tool-call format"):
        parser_for("pythonic")
    with pytest.raises(BadRequest):
        OutputParser(False, "hermes", tools=[{"type": "function"}])


def test_xml_call_grammar_follows_the_schema() -> None:
    spec = {
        "name": "book",
        "parameters": {
            "type": "object",
            "properties": {
                "note": {"type": "string", "maxLength": 5},
                "city": {"enum": ["Paris", 7]},
                "n": {"type": ["integer", "null"]},
            },
            "required": ["city", "n"],
        },
    }
    grammar = Qwen3CoderParser.call_grammar([spec, {"name": "any"}], several=False)
    lines = grammar.splitlines()
    assert lines[0] == 'root ::= "<tool_call>\\n" (fn0 | fn1) "</tool_call>"'
    assert 'fn0 ::= "<function=" "book" ">\\n" fn0-p1 fn0-p2 fn0-p0? "</function>\\n"' in lines
    assert 'fn0-p0 ::= "<parameter=" "note" ">\\n" xml-char{0,5} "\\n</parameter>\\n"' in lines
    assert 'fn0-p1 ::= "<parameter=" "city" ">\\n" ("Paris" | "7") "\\n</parameter>\\n"' in lines
    assert 'fn0-p2 ::= "<parameter=" "n" ">\\n" (json-integer | "null") "\\n</parameter>\\n"' in lines
    assert any(line.startswith('fn1 ::= "<function=" "any" ">\\n" ("<parameter="') for line in lines)
    several = Qwen3CoderParser.call_grammar([spec], several=True).splitlines()[0]
    assert several.endswith('("\\n" "<tool_call>\\n" (fn0) "</tool_call>")*')


def test_forced_calls_are_asked_of_the_templates_format() -> None:
    spec = [QUERY_TOOL["function"]]
    one = forced_call_grammar(official_template("qwen3"), spec, several=False)
    assert one is not None and one.startswith('root ::= "<tool_call>\\n" call-body "\\n</tool_call>"\n')
    assert '"\\"run_query\\""' in one and "dry-run" in one  # the name and the parameter schema
    several = forced_call_grammar(official_template("qwen2.5"), spec, several=True)
    assert several is not None and several.splitlines()[0].endswith(")*")
    # no markup in the template: Hermes, Qwen's default; Qwen3-Coder's template: its XML calls
    assert forced_call_grammar(ChatTemplate("{{ messages[0].content }}"), spec, several=False) == one
    xml = forced_call_grammar(official_template("qwen3-coder"), spec, several=False)
    assert xml == Qwen3CoderParser.call_grammar(spec, several=False)
    assert xml is not None and xml.startswith('root ::= "<tool_call>\\n" (fn0) "</tool_call>"')
