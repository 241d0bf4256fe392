"""XML tool calls (Qwen3-Coder's format, which every Qwen3.5 template teaches) through `qwenkit serve`
and the openai client: streamed as `tool_calls` deltas, id and name first, then argument pieces.

The tiny random Qwen3 GGUF carries the official Qwen3.5 template, so the server picks the XML
format from the model's own template; a forced tool choice makes the random model write a
well-formed call (the XML call grammar), and short, typed parameters keep it finite.
"""

from __future__ import annotations

import json

import pytest
from serve_helpers import start_server

from qwenkit.chat import official_template
from qwenkit.testing import tiny

GREEDY = {"temperature": 0, "seed": 5}
ASK = [{"role": "user", "content": "Book a table in Paris."}]
BOOK = {
    "type": "function",
    "function": {
        "name": "book_table",
        "description": "Book a restaurant table",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"enum": ["Paris", "Tokyo"]},
                "guests": {"type": "integer"},
                "note": {"type": "string", "maxLength": 12},
            },
            "required": ["city", "guests", "note"],
        },
    },
}
NAMED = {"type": "function", "function": {"name": "book_table"}}


@pytest.fixture(scope="module")
def client(source_gguf, tiny_cache):
    gguf = tiny.tiny_gguf(
        "qwen3", tiny_cache, source_gguf=source_gguf, chat_template=official_template("qwen3.5").source
    )
    with start_server(gguf) as server, server.client() as c:
        yield c


def _stream(client, **kw):
    """(tool_calls deltas in order, content, finish_reason) of a streamed completion."""
    deltas, content, finish = [], "", None
    for chunk in client.chat.completions.create(stream=True, **kw):
        for choice in chunk.choices:
            finish = choice.finish_reason or finish
            content += choice.delta.content or ""
            deltas += choice.delta.tool_calls or []
    return deltas, content, finish


def test_xml_call_streams_as_tool_call_deltas(client):
    kw = dict(model="default", messages=ASK, tools=[BOOK], tool_choice=NAMED, max_tokens=120, **GREEDY)
    whole = client.chat.completions.create(**kw)
    assert whole.choices[0].finish_reason == "tool_calls" and whole.choices[0].message.content is None
    (call,) = whole.choices[0].message.tool_calls
    args = json.loads(call.function.arguments)
    assert call.function.name == "book_table" and set(args) == {"city", "guests", "note"}
    assert args["city"] in ("Paris", "Tokyo") and isinstance(args["guests"], int) and len(args["note"]) <= 12

    deltas, content, finish = _stream(client, **kw)
    assert finish == "tool_calls" and content == ""  # no markup leaks into the content
    first, *rest = deltas
    assert first.index == 0 and first.id.startswith("call_") and first.type == "function"
    assert first.function.name == "book_table" and first.function.arguments == ""
    assert len(rest) >= 3 and all(d.index == 0 and d.id is None and d.function.name is None for d in rest)
    streamed = "".join(d.function.arguments for d in rest)
    assert json.loads(streamed) == args
    assert not any(d.function.arguments == streamed for d in rest)  # pieces, not one whole


def test_call_cut_by_max_tokens_is_no_call(client):
    kw = dict(model="default", messages=ASK, tools=[BOOK], tool_choice=NAMED, max_tokens=30, **GREEDY)
    whole = client.chat.completions.create(**kw)
    choice = whole.choices[0]
    assert choice.finish_reason == "length" and choice.message.tool_calls is None
    assert choice.message.content.startswith("<tool_call>\n<function=book_table>\n")
    deltas, content, finish = _stream(client, **kw)
    assert finish == "length" and content == ""
    assert deltas[0].function.name == "book_table"
    with pytest.raises(json.JSONDecodeError):  # the arguments never close
        json.loads("".join(d.function.arguments for d in deltas))
