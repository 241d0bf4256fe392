"""`qwenkit serve` through the official `openai` client: models, health, chat and completions.

One tiny random-weight Qwen2 server (real Qwen tokenizer and template), in this process and shared
with the other modules serving it so: its text is meaningless but greedy decoding is
deterministic, which is what these tests need (and the Python API on the same model gives the
same text, which is what the server must return).
"""

from __future__ import annotations

import pytest
from serve_helpers import sse_events

from qwenkit.engines.base import SamplingParams

HELLO = [{"role": "user", "content": "Say something about tea."}]
GREEDY = {"temperature": 0, "seed": 7}


@pytest.fixture(scope="module")
def server(app_server, tiny_qwen2):
    return app_server(tiny_qwen2, parallel=2)


@pytest.fixture(scope="module")
def client(server):
    with server.client() as c:
        yield c


def _stream_chat(client, **kw):
    """Run a streamed chat; returns (content, reasoning, finish_reason, usage, chunks)."""
    chunks = list(client.chat.completions.create(stream=True, stream_options={"include_usage": True}, **kw))
    content, reasoning, finish = "", "", None
    for chunk in chunks:
        for choice in chunk.choices:
            content += choice.delta.content or ""
            reasoning += (choice.delta.model_extra or {}).get("reasoning_content") or ""
            finish = choice.finish_reason or finish
    return content, reasoning, finish, chunks[-1].usage, chunks


def test_health(server):
    r = server.get("/health", timeout=10)
    assert r.status_code == 200
    assert r.json() == {"status": "ok"}


def test_models_list(client, tiny_qwen2):
    models = client.models.list()
    ids = [m.id for m in models.data]
    assert ids == [tiny_qwen2.stem, tiny_qwen2.name, "default"]  # the file path is not shown
    assert {m.model_extra["root"] for m in models.data} == {tiny_qwen2.stem}
    assert models.data[0].object == "model"
    assert isinstance(models.data[0].created, int)


def test_chat_plain(server, client, tiny_qwen2):
    r = client.chat.completions.create(model="default", messages=HELLO, max_tokens=12, **GREEDY)
    local = server.model.chat(HELLO, max_tokens=12, temperature=0)
    assert r.id.startswith("chatcmpl-")
    assert r.object == "chat.completion"
    assert r.model == tiny_qwen2.stem
    assert len(r.choices) == 1
    choice = r.choices[0]
    assert choice.index == 0
    assert choice.message.role == "assistant"
    assert choice.message.content == local.content and len(local.content) >= 2  # the Python API's greedy text
    assert choice.message.tool_calls is None
    assert choice.finish_reason == "length"  # a random model never says <|im_end|> in 12 tokens
    u = r.usage
    assert u.completion_tokens == 12
    assert u.prompt_tokens == local.usage.prompt_tokens > 10  # the Qwen2.5 template adds its default system message
    assert u.total_tokens == u.prompt_tokens + u.completion_tokens
    assert u.completion_tokens_details.reasoning_tokens == 0


def test_greedy_is_reproducible(client):
    a = client.chat.completions.create(model="default", messages=HELLO, max_tokens=10, **GREEDY)
    b = client.chat.completions.create(model="default", messages=HELLO, max_tokens=10, **GREEDY)
    assert a.choices[0].message.content == b.choices[0].message.content


def test_stream_equals_non_stream(client):
    kw = dict(model="default", messages=HELLO, max_tokens=16, **GREEDY)
    whole = client.chat.completions.create(**kw)
    content, reasoning, finish, usage, chunks = _stream_chat(client, **kw)
    assert content == whole.choices[0].message.content
    assert reasoning == ""
    assert finish == whole.choices[0].finish_reason == "length"
    # First chunk announces the role; every chunk shares one id; only the last carries usage.
    assert chunks[0].choices[0].delta.role == "assistant"
    assert len({c.id for c in chunks}) == 1 and chunks[0].id.startswith("chatcmpl-")
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert chunks[-1].choices == [] and usage is not None
    assert all(c.usage is None for c in chunks[:-1])
    assert usage.model_dump() == whole.usage.model_dump()


def test_stream_without_usage_option_has_no_usage_chunk(client):
    chunks = list(client.chat.completions.create(model="default", messages=HELLO, max_tokens=4, stream=True, **GREEDY))
    assert all(c.usage is None for c in chunks)
    assert chunks[-1].choices[0].finish_reason == "length"


def test_raw_sse_ends_with_done(server):
    body = {"messages": HELLO, "max_tokens": 3, "stream": True, **GREEDY}
    with server.http() as h, h.stream("POST", "/v1/chat/completions", json=body) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        events = list(sse_events(r))
    assert events[-1] == "[DONE]"
    assert all(isinstance(e, dict) for e in events[:-1])


def test_max_tokens_gives_length(client):
    r = client.chat.completions.create(model="default", messages=HELLO, max_tokens=1, **GREEDY)
    assert r.choices[0].finish_reason == "length"
    assert r.usage.completion_tokens == 1


def test_max_completion_tokens(client):
    r = client.chat.completions.create(model="default", messages=HELLO, max_completion_tokens=3, **GREEDY)
    assert r.choices[0].finish_reason == "length"
    assert r.usage.completion_tokens == 3
    # The newer field wins over the deprecated one.
    r = client.chat.completions.create(model="default", messages=HELLO, max_completion_tokens=2, max_tokens=9, **GREEDY)
    assert r.usage.completion_tokens == 2


def test_stop_string_cuts_output(client):
    kw = dict(model="default", messages=HELLO, **GREEDY)
    free = client.chat.completions.create(max_tokens=24, **kw).choices[0].message.content
    # A stop string taken from the middle of the free output: the answer must end right before
    # its first occurrence, and the stop string itself is never returned.
    middle = free[len(free) // 2 :].lstrip()
    assert len(middle) >= 2, free
    stop = middle[:2]
    cut = free.index(stop)
    r = client.chat.completions.create(max_tokens=24, stop=[stop, "\u0000never\u0000"], **kw)
    assert r.choices[0].finish_reason == "stop"
    assert r.choices[0].message.content == free[:cut]
    assert r.usage.completion_tokens < 24
    # Streamed: the same text (nothing of the stop string leaks out of held-back text).
    content, _, finish, usage, _ = _stream_chat(client, max_tokens=24, stop=stop, **kw)
    assert content == free[:cut]
    assert finish == "stop"
    assert usage.model_dump() == r.usage.model_dump()


def test_immediate_end_of_turn(client):
    # logit_bias forces <|im_end|>: an empty answer that stopped, with one completion token.
    r = client.chat.completions.create(
        model="default", messages=HELLO, max_tokens=8, logit_bias={"151645": 100}, **GREEDY
    )
    assert r.choices[0].finish_reason == "stop"
    assert r.choices[0].message.content == ""
    assert r.usage.completion_tokens == 1


def test_multi_turn_and_system_messages(server, client):
    messages = [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello."},
        {"role": "developer", "content": "Be nice."},
        {"role": "user", "content": [{"type": "text", "text": "Again"}]},
    ]
    r = client.chat.completions.create(model="default", messages=messages, max_tokens=3, **GREEDY)
    local = server.model.chat(messages, max_tokens=3, temperature=0)
    assert r.choices[0].message.content == local.content and local.content
    assert r.usage.prompt_tokens == local.usage.prompt_tokens > 15


def test_completions_plain(server, client, tiny_qwen2):
    r = client.completions.create(model="default", prompt="def fib(n):", max_tokens=6, **GREEDY)
    assert r.id.startswith("cmpl-")
    assert r.object == "text_completion"
    assert r.model == tiny_qwen2.stem
    assert len(r.choices) == 1
    engine = server.model.engine
    greedy = [
        c.text for c in engine.generate(engine.tokenize("def fib(n):"), SamplingParams(max_tokens=6, temperature=0))
    ]
    assert r.choices[0].text == "".join(greedy) and r.choices[0].text  # the engine's own greedy text
    assert r.choices[0].finish_reason == "length"
    assert r.usage.completion_tokens == 6
    assert r.usage.prompt_tokens == 4  # "def", " fib", "(n", "):" -- no chat template
    assert r.usage.total_tokens == 10


def test_completions_echo(client):
    plain = client.completions.create(model="default", prompt="def fib(n):", max_tokens=5, **GREEDY)
    echoed = client.completions.create(model="default", prompt="def fib(n):", max_tokens=5, echo=True, **GREEDY)
    assert echoed.choices[0].text == "def fib(n):" + plain.choices[0].text


def test_completions_streamed(client):
    kw = dict(model="default", prompt="import os\n", max_tokens=8, **GREEDY)
    whole = client.completions.create(**kw)
    chunks = list(client.completions.create(stream=True, stream_options={"include_usage": True}, **kw))
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    assert text == whole.choices[0].text
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == ["length"]
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.model_dump(exclude={"prompt_tokens_details"}) == whole.usage.model_dump(
        exclude={"prompt_tokens_details"}
    )
    # With echo, the prompt comes first.
    echoed = list(client.completions.create(stream=True, echo=True, **kw))
    assert "".join(c.choices[0].text for c in echoed if c.choices) == "import os\n" + text


def test_completions_stop(client):
    kw = dict(model="default", prompt="The list:", **GREEDY)
    free = client.completions.create(max_tokens=20, **kw).choices[0].text
    stop = free[len(free) // 2 :].lstrip()[:2]
    assert len(stop) == 2, free
    r = client.completions.create(max_tokens=20, stop=stop, **kw)
    assert r.choices[0].finish_reason == "stop"
    assert r.choices[0].text == free[: free.index(stop)]


def test_concurrent_requests_all_complete(server):
    # Two slots, four requests at once: all finish with their own, correct usage.
    import concurrent.futures as cf

    def one(i: int):
        with server.client() as c:
            return c.chat.completions.create(
                model="default", messages=[{"role": "user", "content": f"n={i}"}], max_tokens=5 + i, **GREEDY
            )

    with cf.ThreadPoolExecutor(4) as pool:
        results = list(pool.map(one, range(4)))
    assert [r.usage.completion_tokens for r in results] == [5, 6, 7, 8]
    assert all(r.choices[0].finish_reason == "length" for r in results)
