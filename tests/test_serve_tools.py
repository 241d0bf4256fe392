"""Tool calls and JSON output through `qwenkit serve`, on a tiny random Qwen2 model.

A forced tool choice (`"required"` or a named function) and `response_format` JSON schemas are
enforced by a grammar, so even a random-weight model produces well-formed calls and JSON; enum
parameters keep the output short and finite. The real model's round trips are in
test_serve_real_model.py.
"""

from __future__ import annotations

import json

import pytest

GREEDY = {"temperature": 0, "seed": 11}
ASK = [{"role": "user", "content": "What is the weather in Paris, and the time?"}]

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather of a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"enum": ["Paris", "Tokyo"]}, "unit": {"enum": ["c", "f"]}},
            "required": ["city", "unit"],
            "additionalProperties": False,
        },
    },
}
TIME = {
    "type": "function",
    "function": {
        "name": "get_time",
        "description": "Current time in a zone",
        "parameters": {
            "type": "object",
            "properties": {"zone": {"enum": ["UTC", "CET"]}},
            "required": ["zone"],
            "additionalProperties": False,
        },
    },
}
TOOLS = [WEATHER, TIME]


@pytest.fixture(scope="module")
def server(app_server, tiny_qwen2):
    return app_server(tiny_qwen2, parallel=2)


@pytest.fixture(scope="module")
def client(server):
    with server.client() as c:
        yield c


def _check_call(call, name: str) -> dict:
    assert call.type == "function"
    assert call.id and call.id.startswith("call_")
    assert call.function.name == name
    args = json.loads(call.function.arguments)  # arguments are a JSON string, as OpenAI sends
    assert isinstance(args, dict)
    if name == "get_weather":
        assert set(args) == {"city", "unit"} and args["city"] in ("Paris", "Tokyo") and args["unit"] in ("c", "f")
    else:
        assert set(args) == {"zone"} and args["zone"] in ("UTC", "CET")
    return args


def _streamed_calls(chunks) -> tuple[dict[int, dict], str | None]:
    """Accumulate streamed tool-call deltas the way OpenAI clients do (by index)."""
    calls: dict[int, dict] = {}
    finish = None
    for chunk in chunks:
        for choice in chunk.choices:
            finish = choice.finish_reason or finish
            for d in choice.delta.tool_calls or []:
                slot = calls.setdefault(d.index, {"id": None, "name": "", "arguments": ""})
                slot["id"] = d.id or slot["id"]
                if d.function is not None:
                    slot["name"] += d.function.name or ""
                    slot["arguments"] += d.function.arguments or ""
    return calls, finish


@pytest.mark.parametrize("name", ["get_weather", "get_time"])
def test_named_tool_choice_forces_that_call(client, name):
    r = client.chat.completions.create(
        model="default",
        messages=ASK,
        tools=TOOLS,
        max_tokens=80,
        tool_choice={"type": "function", "function": {"name": name}},
        **GREEDY,
    )
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    assert len(choice.message.tool_calls) == 1
    _check_call(choice.message.tool_calls[0], name)
    assert r.usage.completion_tokens < 80


def test_required_with_one_tool(client):
    r = client.chat.completions.create(
        model="default", messages=ASK, tools=[WEATHER], tool_choice="required", max_tokens=80, **GREEDY
    )
    assert r.choices[0].finish_reason == "tool_calls"
    (call,) = r.choices[0].message.tool_calls
    _check_call(call, "get_weather")


def test_required_without_parallel_calls_gives_one_call(client):
    r = client.chat.completions.create(
        model="default",
        messages=ASK,
        tools=TOOLS,
        tool_choice="required",
        parallel_tool_calls=False,
        max_tokens=80,
        **GREEDY,
    )
    assert r.choices[0].finish_reason == "tool_calls"
    (call,) = r.choices[0].message.tool_calls
    _check_call(call, call.function.name)


def test_streamed_tool_call_accumulates_to_the_same_call(client):
    kw = dict(
        model="default",
        messages=ASK,
        tools=TOOLS,
        max_tokens=80,
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
        **GREEDY,
    )
    whole = client.chat.completions.create(**kw)
    chunks = list(client.chat.completions.create(stream=True, stream_options={"include_usage": True}, **kw))
    calls, finish = _streamed_calls(chunks)
    assert finish == "tool_calls"
    assert list(calls) == [0]
    expected = whole.choices[0].message.tool_calls[0]
    assert calls[0]["name"] == expected.function.name
    assert json.loads(calls[0]["arguments"]) == json.loads(expected.function.arguments)
    assert calls[0]["id"] and calls[0]["id"].startswith("call_")
    assert not "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)  # no markup leaks
    assert chunks[-1].usage.model_dump(exclude={"prompt_tokens_details"}) == whole.usage.model_dump(
        exclude={"prompt_tokens_details"}
    )


def test_tool_choice_none_gives_no_calls(server, client):
    auto = client.chat.completions.create(model="default", messages=ASK, tools=TOOLS, max_tokens=6, **GREEDY)
    none = client.chat.completions.create(
        model="default", messages=ASK, tools=TOOLS, tool_choice="none", max_tokens=6, **GREEDY
    )
    assert none.choices[0].message.tool_calls is None
    assert none.choices[0].finish_reason == "length"
    assert (
        none.choices[0].message.content == server.model.chat(ASK, max_tokens=6, temperature=0).content
    )  # as if toolless
    # "none" leaves the tools out of the prompt altogether.
    assert none.usage.prompt_tokens < auto.usage.prompt_tokens - 50


def test_tool_result_round_trip_is_accepted(client):
    first = client.chat.completions.create(
        model="default",
        messages=ASK,
        tools=TOOLS,
        max_tokens=80,
        tool_choice={"type": "function", "function": {"name": "get_time"}},
        **GREEDY,
    )
    call = first.choices[0].message.tool_calls[0]
    messages = [
        *ASK,
        first.choices[0].message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": json.dumps({"time": "12:00"})},
    ]
    second = client.chat.completions.create(model="default", messages=messages, tools=TOOLS, max_tokens=4, **GREEDY)
    assert second.choices[0].finish_reason == "length" and second.usage.completion_tokens == 4
    assert second.choices[0].message.content and not second.choices[0].message.tool_calls
    # The call and its result are now part of the prompt.
    assert second.usage.prompt_tokens > first.usage.prompt_tokens + first.usage.completion_tokens
    # Arguments given as an object (not a string) and content parts are accepted too.
    messages[1] = {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {"id": call.id, "type": "function", "function": {"name": "get_time", "arguments": {"zone": "UTC"}}}
        ],
    }
    messages[2] = {"role": "tool", "tool_call_id": call.id, "content": [{"type": "text", "text": "12:00"}]}
    third = client.chat.completions.create(model="default", messages=messages, tools=TOOLS, max_tokens=2, **GREEDY)
    assert third.usage.completion_tokens == 2


SCHEMA = {
    "type": "object",
    "properties": {
        "color": {"enum": ["red", "green", "blue"]},
        "ok": {"type": "boolean"},
        "n": {"type": "integer"},
        "tags": {"type": "array", "items": {"enum": ["a", "b"]}, "minItems": 1, "maxItems": 3},
    },
    "required": ["color", "ok", "n", "tags"],
    "additionalProperties": False,
}


def _validate(data: dict) -> None:
    assert isinstance(data, dict) and set(data) == {"color", "ok", "n", "tags"}, data
    assert data["color"] in ("red", "green", "blue")
    assert isinstance(data["ok"], bool)
    assert isinstance(data["n"], int) and not isinstance(data["n"], bool)
    assert isinstance(data["tags"], list) and 1 <= len(data["tags"]) <= 3
    assert all(t in ("a", "b") for t in data["tags"])


def test_json_schema_output_validates(client):
    fmt = {"type": "json_schema", "json_schema": {"name": "thing", "schema": SCHEMA, "strict": True}}
    r = client.chat.completions.create(
        model="default",
        messages=[{"role": "user", "content": "A thing, please."}],
        response_format=fmt,
        max_tokens=100,
        **GREEDY,
    )
    assert r.choices[0].finish_reason == "stop"
    _validate(json.loads(r.choices[0].message.content))
    # Streamed: the same JSON text.
    chunks = list(
        client.chat.completions.create(
            model="default",
            messages=[{"role": "user", "content": "A thing, please."}],
            response_format=fmt,
            max_tokens=100,
            stream=True,
            **GREEDY,
        )
    )
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == r.choices[0].message.content


def test_json_schema_with_sampling_still_validates(client):
    fmt = {"type": "json_schema", "json_schema": {"name": "thing", "schema": SCHEMA}}
    for seed in (1, 2, 3):
        r = client.chat.completions.create(
            model="default",
            messages=[{"role": "user", "content": "Another."}],
            response_format=fmt,
            max_tokens=100,
            temperature=1.0,
            seed=seed,
        )
        assert r.choices[0].finish_reason == "stop"
        _validate(json.loads(r.choices[0].message.content))


@pytest.mark.xfail(reason="llama_cpp's Python JSON-schema converter ignores minimum/maximum", strict=False)
def test_json_schema_integer_range(client):
    schema = {
        "type": "object",
        "properties": {"n": {"type": "integer", "minimum": 0, "maximum": 9}},
        "required": ["n"],
        "additionalProperties": False,
    }
    fmt = {"type": "json_schema", "json_schema": {"name": "digit", "schema": schema}}
    for seed in (1, 2, 3):
        r = client.chat.completions.create(
            model="default",
            messages=[{"role": "user", "content": "A digit."}],
            response_format=fmt,
            max_tokens=40,
            temperature=1.0,
            seed=seed,
        )
        assert 0 <= json.loads(r.choices[0].message.content)["n"] <= 9


def test_json_schema_on_qwen3_skips_thinking(app_server, tiny_qwen3):
    # Constrained output is the answer itself: no reasoning first, even with thinking on.
    with app_server(tiny_qwen3, parallel=2).client() as c:
        fmt = {"type": "json_schema", "json_schema": {"name": "thing", "schema": SCHEMA}}
        r = c.chat.completions.create(
            model="default",
            messages=[{"role": "user", "content": "A thing."}],
            response_format=fmt,
            max_tokens=100,
            **GREEDY,
        )
        assert not (r.choices[0].message.model_extra or {}).get("reasoning_content")
        assert r.usage.completion_tokens_details.reasoning_tokens == 0
        _validate(json.loads(r.choices[0].message.content))
        t = c.chat.completions.create(
            model="default",
            messages=ASK,
            tools=TOOLS,
            tool_choice="required",
            parallel_tool_calls=False,
            max_tokens=80,
            **GREEDY,
        )
        assert t.choices[0].finish_reason == "tool_calls"
        _check_call(t.choices[0].message.tool_calls[0], t.choices[0].message.tool_calls[0].function.name)
