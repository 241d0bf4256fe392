"""Qwen3 reasoning through `qwenkit serve`: `reasoning_content` / `reasoning`, thinking switches,
`usage.completion_tokens_details.reasoning_tokens`, streamed vs non-streamed.

The tiny random Qwen3 model carries the official hybrid-thinking template. With thinking on it
(practically) never writes `</think>` itself: the thinking budget closes its reasoning before
the answer reserve (the stop-thinking phrase and `</think>` are forced), and the rest of
`max_tokens` is answer. With thinking off the template appends an empty think block and
everything is answer. `logit_bias` on `</think>` (id 151668) makes it close thinking at once.
A small `max_tokens` (no room to think and answer) turns thinking off, so these tests ask for
`THINK_TOKENS`.
"""

from __future__ import annotations

import pytest
from serve_helpers import THINK_CLOSE, assert_openai_error

HELLO = [{"role": "user", "content": "Why is the sky blue?"}]
GREEDY = {"temperature": 0, "seed": 3}
THINK_TOKENS = 96  # room to think, close thinking and answer


@pytest.fixture(scope="module")
def server(app_server, tiny_qwen3):
    return app_server(tiny_qwen3, parallel=2)


@pytest.fixture(scope="module")
def client(server):
    with server.client() as c:
        yield c


def _extra(message) -> dict:
    return message.model_extra or {}


def test_thinking_on_separates_reasoning_and_answer(client):
    r = client.chat.completions.create(model="default", messages=HELLO, max_tokens=THINK_TOKENS, **GREEDY)
    message = r.choices[0].message
    extra = _extra(message)
    reasoning = extra.get("reasoning_content")
    assert reasoning, message
    assert extra.get("reasoning") == reasoning  # both names, the same text
    assert message.content  # the answer came after the (closed) thinking
    for text in (reasoning, message.content):
        assert "<think>" not in text and "</think>" not in text
    assert r.choices[0].finish_reason == "length"
    u = r.usage
    assert u.completion_tokens == THINK_TOKENS
    assert 0 < u.completion_tokens_details.reasoning_tokens < u.completion_tokens


def test_streamed_reasoning_and_usage_match_non_streamed(client):
    kw = dict(model="default", messages=HELLO, max_tokens=THINK_TOKENS, **GREEDY)
    whole = client.chat.completions.create(**kw)
    chunks = list(client.chat.completions.create(stream=True, stream_options={"include_usage": True}, **kw))
    reasoning = "".join(_extra(c.choices[0].delta).get("reasoning_content") or "" for c in chunks if c.choices)
    reasoning2 = "".join(_extra(c.choices[0].delta).get("reasoning") or "" for c in chunks if c.choices)
    content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert reasoning == reasoning2 == _extra(whole.choices[0].message)["reasoning_content"]
    assert content == whole.choices[0].message.content
    # Reasoning deltas all come before the first answer delta.
    kinds = [
        ("r" if _extra(c.choices[0].delta).get("reasoning_content") else "c")
        for c in chunks
        if c.choices and (c.choices[0].delta.content or _extra(c.choices[0].delta).get("reasoning_content"))
    ]
    assert kinds == sorted(kinds, key=lambda k: k == "c")
    usage = chunks[-1].usage
    assert usage is not None
    assert usage.model_dump() == whole.usage.model_dump()
    assert usage.completion_tokens_details.reasoning_tokens > 0


@pytest.mark.parametrize(
    "switch",
    [
        {"extra_body": {"chat_template_kwargs": {"enable_thinking": False}}},
        {"extra_body": {"enable_thinking": False}},
    ],
    ids=["chat_template_kwargs", "top_level"],
)
def test_thinking_off(server, client, switch):
    on = client.chat.completions.create(model="default", messages=HELLO, max_tokens=THINK_TOKENS, **GREEDY)
    r = client.chat.completions.create(model="default", messages=HELLO, max_tokens=THINK_TOKENS, **GREEDY, **switch)
    message = r.choices[0].message
    assert not _extra(message).get("reasoning_content")
    assert not _extra(message).get("reasoning")
    local = server.model.chat(HELLO, max_tokens=THINK_TOKENS, temperature=0, think=False)  # the Python API's
    assert message.content == local.content and local.reasoning is None and local.content
    assert r.usage.completion_tokens_details.reasoning_tokens == 0
    assert _extra(on.choices[0].message).get("reasoning_content")  # the same request thinks by default
    # The template appended the empty think block: the prompt grew by "<think>\n\n</think>\n\n".
    assert r.usage.prompt_tokens > on.usage.prompt_tokens


def test_thinking_off_streamed_has_no_reasoning_deltas(client):
    chunks = list(
        client.chat.completions.create(
            model="default",
            messages=HELLO,
            max_tokens=THINK_TOKENS,
            stream=True,
            stream_options={"include_usage": True},
            extra_body={"chat_template_kwargs": {"enable_thinking": False}},
            **GREEDY,
        )
    )
    assert not any(_extra(c.choices[0].delta).get("reasoning_content") for c in chunks if c.choices)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert chunks[-1].usage.completion_tokens_details.reasoning_tokens == 0


def test_soft_switch_no_think(client):
    messages = [{"role": "user", "content": "Why is the sky blue? /no_think"}]
    r = client.chat.completions.create(model="default", messages=messages, max_tokens=THINK_TOKENS, **GREEDY)
    assert not _extra(r.choices[0].message).get("reasoning_content")
    assert r.usage.completion_tokens_details.reasoning_tokens == 0


def test_closed_thinking_counts_only_the_think_block(client):
    # Forced </think> first: the (empty) thinking block is one token; no reasoning text.
    r = client.chat.completions.create(
        model="default", messages=HELLO, max_tokens=THINK_TOKENS, logit_bias={str(THINK_CLOSE): 100}, **GREEDY
    )
    assert not _extra(r.choices[0].message).get("reasoning_content")
    assert r.usage.completion_tokens == THINK_TOKENS
    assert r.usage.completion_tokens_details.reasoning_tokens == 1


def test_history_with_reasoning_is_accepted(client):
    messages = [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!", "reasoning_content": "The user greets me."},
        {"role": "user", "content": "Bye"},
    ]
    r = client.chat.completions.create(model="default", messages=messages, max_tokens=3, **GREEDY)
    assert r.choices[0].finish_reason == "length"


def test_non_boolean_enable_thinking_is_a_400(server):
    body = {"messages": HELLO, "max_tokens": 2, "chat_template_kwargs": {"enable_thinking": "yes"}}
    r = server.post("/v1/chat/completions", json=body, timeout=30)
    assert_openai_error(r, 400)
    body = {"messages": HELLO, "max_tokens": 2, "enable_thinking": "maybe"}
    r = server.post("/v1/chat/completions", json=body, timeout=30)
    assert_openai_error(r, 400)
