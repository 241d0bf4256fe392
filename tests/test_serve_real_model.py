"""`qwenkit serve` with the real embedded Qwen2.5-Coder-0.5B-Instruct: behaviour that needs a model
that means what it says (an answer, a stop string in counted text, a tool round trip, JSON that
a schema accepts). Greedy decoding and small token limits keep it short on a CPU.
"""

from __future__ import annotations

import json

import pytest

pytestmark = pytest.mark.integration

GREEDY = {"temperature": 0, "seed": 0}
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the current weather for a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "description": "The city name"}},
            "required": ["city"],
        },
    },
}


@pytest.fixture(scope="module")
def server(app_server, source_gguf):
    return app_server(source_gguf, parallel=1)


@pytest.fixture(scope="module")
def client(server):
    with server.client(timeout=300) as c:
        yield c


def test_plain_answer(client):
    r = client.chat.completions.create(
        model="default",
        messages=[{"role": "user", "content": "What is 2+2? Reply with only the number."}],
        max_tokens=8,
        **GREEDY,
    )
    assert "4" in r.choices[0].message.content
    assert r.choices[0].finish_reason == "stop"
    assert r.usage.completion_tokens <= 8
    assert r.model.startswith("qwen2.5-coder-0.5b-instruct")


def test_stop_string(client):
    messages = [{"role": "user", "content": "Count from 1 to 10, separated by commas. Output only the numbers."}]
    r = client.chat.completions.create(model="default", messages=messages, max_tokens=40, stop=["5"], **GREEDY)
    content = r.choices[0].message.content
    assert r.choices[0].finish_reason == "stop"
    assert "4" in content and "5" not in content, content
    assert "6" not in content
    # Streamed, the stop string is held back and never leaks out either.
    chunks = list(
        client.chat.completions.create(
            model="default", messages=messages, max_tokens=40, stop=["5"], stream=True, **GREEDY
        )
    )
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == content
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_tool_round_trip(client):
    messages = [{"role": "user", "content": "What is the weather like in Paris right now?"}]
    first = client.chat.completions.create(
        model="default", messages=messages, tools=[WEATHER_TOOL], tool_choice="required", max_tokens=40, **GREEDY
    )
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls"
    (call,) = choice.message.tool_calls
    assert call.type == "function" and call.id.startswith("call_")
    assert call.function.name == "get_weather"
    args = json.loads(call.function.arguments)
    assert isinstance(args.get("city"), str) and "paris" in args["city"].lower(), args

    # The assistant turn goes back as the client got it, followed by the tool's result.
    messages.append(choice.message.model_dump(exclude_none=True))
    messages.append(
        {
            "role": "tool",
            "tool_call_id": call.id,
            "content": json.dumps({"city": "Paris", "temperature_c": 21, "sky": "sunny"}),
        }
    )
    final = client.chat.completions.create(
        model="default", messages=messages, tools=[WEATHER_TOOL], max_tokens=40, **GREEDY
    )
    answer = final.choices[0]
    assert answer.finish_reason in ("stop", "length")
    assert answer.message.tool_calls is None
    assert isinstance(answer.message.content, str) and answer.message.content.strip()
    assert final.usage.prompt_tokens > first.usage.prompt_tokens + 15  # the call and its result are in


def test_streamed_named_tool_call_equals_non_streamed(client):
    messages = [{"role": "user", "content": "What is the weather like in Paris right now?"}]
    named = {"type": "function", "function": {"name": "get_weather"}}
    whole = client.chat.completions.create(
        model="default", messages=messages, tools=[WEATHER_TOOL], tool_choice=named, max_tokens=40, **GREEDY
    )
    expected = whole.choices[0].message.tool_calls[0]
    name, arguments, finish, indexes = "", "", None, set()
    for chunk in client.chat.completions.create(
        model="default",
        messages=messages,
        tools=[WEATHER_TOOL],
        tool_choice=named,
        max_tokens=40,
        stream=True,
        **GREEDY,
    ):
        for c in chunk.choices:
            finish = c.finish_reason or finish
            for d in c.delta.tool_calls or []:
                indexes.add(d.index)
                name += d.function.name or ""
                arguments += d.function.arguments or ""
    assert finish == "tool_calls"
    assert indexes == {0}
    assert name == expected.function.name == "get_weather"
    assert json.loads(arguments) == json.loads(expected.function.arguments)


def test_json_schema_output_validates(client):
    schema = {
        "type": "object",
        "properties": {
            "name": {"type": "string"},
            "age": {"type": "integer"},
            "languages": {"type": "array", "items": {"type": "string"}},
        },
        "required": ["name", "age", "languages"],
        "additionalProperties": False,
    }
    r = client.chat.completions.create(
        model="default",
        messages=[{"role": "user", "content": "Invent a programmer: name, age and languages."}],
        response_format={"type": "json_schema", "json_schema": {"name": "programmer", "schema": schema}},
        max_tokens=80,
        **GREEDY,
    )
    assert r.choices[0].finish_reason == "stop"
    data = json.loads(r.choices[0].message.content)
    assert set(data) == {"name", "age", "languages"}
    assert isinstance(data["name"], str) and data["name"]
    assert isinstance(data["age"], int) and not isinstance(data["age"], bool)
    assert isinstance(data["languages"], list) and all(isinstance(x, str) for x in data["languages"])


def test_json_object_output(client):
    r = client.chat.completions.create(
        model="default",
        messages=[{"role": "user", "content": "Give me a JSON object with a key named color."}],
        response_format={"type": "json_object"},
        max_tokens=40,
        **GREEDY,
    )
    assert r.choices[0].finish_reason == "stop"
    data = json.loads(r.choices[0].message.content)
    assert isinstance(data, dict) and data
