"""`POST /v1/responses`: input items to chat messages, output items and their stream events, and
the API through the official `openai` client on a tiny model (text, streaming, a tool call
round trip with `previous_response_id`)."""

from __future__ import annotations

import json

import openai
import pytest

from qwenkit.chat.tools.base import ToolCall
from qwenkit.serve.responses_protocol import ResponsesRequest
from qwenkit.serve.responses_routes import OutputBuilder, input_messages

WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "Weather for a city",
    "parameters": {  # an enum keeps a random model's forced call short
        "type": "object",
        "properties": {"city": {"enum": ["Paris", "Tokyo"]}},
        "required": ["city"],
        "additionalProperties": False,
    },
}


def test_input_items_become_chat_messages():
    body = ResponsesRequest.model_validate(
        {
            "input": [
                {"role": "user", "content": [{"type": "input_text", "text": "Weather in Paris?"}]},
                {"type": "reasoning", "summary": [], "content": [{"type": "reasoning_text", "text": "I should call."}]},
                {"type": "function_call", "call_id": "c1", "name": "get_weather", "arguments": '{"city": "Paris"}'},
                {"type": "function_call_output", "call_id": "c1", "output": "sunny"},
            ]
        }
    )
    assert input_messages(body.input) == [
        {"role": "user", "content": "Weather in Paris?"},
        {
            "role": "assistant",
            "content": "",
            "reasoning_content": "I should call.",
            "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}
            ],
        },
        {"role": "tool", "tool_call_id": "c1", "content": "sunny"},
    ]
    assert input_messages("hi") == [{"role": "user", "content": "hi"}]


def test_output_items_and_events_from_deltas():
    out = OutputBuilder(parallel_tool_calls=True)
    events = out.feed("Let me ", "", [])
    events += out.feed("think.", "", [])
    events += out.feed("", "Calling.", [ToolCall("call_1", "get_weather", '{"city": "Oslo"}')])
    events += out.finish(complete=True)
    kinds = [e["type"] for e in events]
    assert kinds == [
        "response.output_item.added",
        "response.content_part.added",
        "response.reasoning_text.delta",
        "response.reasoning_text.delta",
        "response.reasoning_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.output_item.added",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.done",
        "response.output_item.done",
    ]
    reasoning, message, call = out.items
    assert reasoning.type == "reasoning" and reasoning.content[0].text == "Let me think."
    assert message.type == "message" and message.content[0].text == "Calling." and message.status == "completed"
    assert (call.type, call.call_id, call.name, call.arguments) == (
        "function_call",
        "call_1",
        "get_weather",
        '{"city": "Oslo"}',
    )
    assert [e["output_index"] for e in events if e["type"] == "response.output_item.done"] == [0, 1, 2]
    assert events[-1]["item"] == call.model_dump()


def test_no_output_is_one_empty_message():
    out = OutputBuilder(parallel_tool_calls=True)
    out.finish(complete=False)
    (message,) = out.items
    assert message.content[0].text == "" and message.status == "incomplete"


@pytest.fixture(scope="module")
def server(app_server, tiny_qwen2):
    return app_server(tiny_qwen2, parallel=2, max_stored_responses=4)


@pytest.fixture(scope="module")
def client(server):
    with server.client() as c:
        yield c


def test_text_response_whole_and_streamed(server, client):
    kw = dict(model="default", input="Say something about tea.", max_output_tokens=6, temperature=0)
    whole = client.responses.create(**kw)
    assert whole.object == "response" and whole.id.startswith("resp")
    assert whole.status == "incomplete" and whole.incomplete_details.reason == "max_output_tokens"
    assert [item.type for item in whole.output] == ["message"]
    local = server.model.chat("Say something about tea.", max_tokens=6, temperature=0)  # the chat path's answer
    assert whole.output_text == local.content and local.content and whole.usage.output_tokens == 6
    assert whole.usage.total_tokens == whole.usage.input_tokens + 6
    events = list(client.responses.create(stream=True, **kw))
    kinds = [e.type for e in events]
    assert kinds[:2] == ["response.created", "response.in_progress"] and kinds[-1] == "response.incomplete"
    assert [e.sequence_number for e in events] == list(range(len(events)))
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert text == whole.output_text == events[-1].response.output_text


def test_tool_call_round_trip(client):
    first = client.responses.create(
        model="default",
        input="What is the weather in Paris?",
        tools=[WEATHER],
        tool_choice="required",
        max_output_tokens=80,
        temperature=0,
    )
    calls = [item for item in first.output if item.type == "function_call"]
    assert calls and calls[0].name == "get_weather"
    assert isinstance(json.loads(calls[0].arguments), dict)
    second = client.responses.create(
        model="default",
        previous_response_id=first.id,
        input=[{"type": "function_call_output", "call_id": calls[0].call_id, "output": "sunny, 21 C"}],
        tools=[WEATHER],
        max_output_tokens=4,
        temperature=0,
    )
    assert second.previous_response_id == first.id
    assert second.output[-1].type in ("message", "function_call")
    # the history (question, call, result) was sent: more than the first prompt and its call
    assert second.usage.input_tokens > first.usage.input_tokens + first.usage.output_tokens
    assert client.responses.retrieve(second.id).id == second.id


def test_unknown_previous_response_is_404(client):
    with pytest.raises(openai.NotFoundError) as info:
        client.responses.create(model="default", input="hi", previous_response_id="resp_nope", max_output_tokens=2)
    assert info.value.body["code"] == "response_not_found"


def test_store_is_bounded(client):
    ids = [client.responses.create(model="default", input="hi", max_output_tokens=1).id for _ in range(5)]
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(ids[0])  # four are kept
    assert client.responses.retrieve(ids[-1]).id == ids[-1]
    unstored = client.responses.create(model="default", input="hi", max_output_tokens=1, store=False)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(unstored.id)
