"""The OpenAI surface on the real embedded Qwen2.5-Coder-0.5B-Instruct, through the official
`openai` client: logprobs, n choices, model routing and a Responses API tool round trip."""

from __future__ import annotations

import json

import openai
import pytest

pytestmark = pytest.mark.integration

ASK = [{"role": "user", "content": "Name a primary colour. One word."}]
WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "Get the current weather for a city",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string", "description": "The city name"}},
        "required": ["city"],
    },
}


@pytest.fixture(scope="module")
def client(app_server, source_gguf):
    with app_server(source_gguf, max_n=3, parallel=3).client(timeout=300) as c:
        yield c


def test_greedy_logprobs_are_the_maximum_and_streamed_equals_whole(client):
    kw = dict(model="default", messages=ASK, max_tokens=8, temperature=0, logprobs=True, top_logprobs=5)
    whole = client.chat.completions.create(**kw).choices[0]
    content = whole.logprobs.content
    assert "".join(e.token for e in content).strip() and len(content) >= 1
    for entry in content:
        assert entry.logprob == pytest.approx(max(t.logprob for t in entry.top_logprobs), abs=1e-4)
        assert entry.top_logprobs[0].token == entry.token
    streamed = [e for chunk in client.chat.completions.create(stream=True, **kw) for c in chunk.choices
                if c.logprobs for e in c.logprobs.content]  # fmt: skip
    assert [e.token for e in streamed] == [e.token for e in content]
    assert [e.logprob for e in streamed] == pytest.approx([e.logprob for e in content], abs=1e-4)


def test_three_choices_one_prompt_charge(client):
    one = client.chat.completions.create(model="default", messages=ASK, max_tokens=8, temperature=1.0)
    three = client.chat.completions.create(model="default", messages=ASK, max_tokens=8, temperature=1.0, n=3)
    assert [c.index for c in three.choices] == [0, 1, 2]
    assert all(c.message.content for c in three.choices)
    assert three.usage.prompt_tokens == one.usage.prompt_tokens
    assert three.usage.completion_tokens >= 3


def test_unknown_model_is_404(client):
    with pytest.raises(openai.NotFoundError) as info:
        client.chat.completions.create(model="gpt-4o", messages=ASK, max_tokens=2)
    assert info.value.status_code == 404 and info.value.body["code"] == "model_not_found"
    names = [m.id for m in client.models.list().data]
    assert "default" in names and any(name.endswith(".gguf") for name in names)  # started from a path
    r = client.chat.completions.create(model=names[0], messages=ASK, max_tokens=2)
    assert r.model == names[0]


def test_responses_round_trips_a_tool_call(client):
    first = client.responses.create(
        model="default",
        input="What is the weather in Paris right now?",
        tools=[WEATHER],
        tool_choice="required",
        max_output_tokens=60,
        temperature=0,
    )
    (call,) = [item for item in first.output if item.type == "function_call"]
    assert call.name == "get_weather" and "paris" in json.loads(call.arguments)["city"].lower()
    second = client.responses.create(
        model="default",
        previous_response_id=first.id,
        input=[{"type": "function_call_output", "call_id": call.call_id, "output": '{"temperature_c": 21}'}],
        tools=[WEATHER],
        max_output_tokens=60,
        temperature=0,
    )
    assert second.status == "completed" and second.output[-1].type == "message"
    assert "21" in second.output_text
