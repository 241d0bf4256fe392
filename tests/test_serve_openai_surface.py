"""logprobs, n choices, best_of, echo and model routing through the official `openai` client.

Tiny random-weight models: text is meaningless but greedy decoding is deterministic, so the
shapes, the accounting and the agreement between streamed and whole answers can be checked.
The same surface runs on llama.cpp and (one server) on transformers.
"""

from __future__ import annotations

import math

import openai
import pytest
from serve_helpers import assert_openai_error, sse_events

HELLO = [{"role": "user", "content": "Say something about tea."}]
GREEDY = {"temperature": 0, "seed": 7}


@pytest.fixture(scope="module", params=["llamacpp", "transformers"])
def server(request, app_server):
    if request.param == "llamacpp":
        model, engine = request.getfixturevalue("tiny_qwen2"), "auto"
    else:
        model, engine = request.getfixturevalue("tiny_hf_qwen2"), "transformers"
    return app_server(model, engine=engine, max_n=3, parallel=3, ctx=1024)


@pytest.fixture(scope="module")
def client(server):
    with server.client() as c:
        yield c


def _check_chat_logprobs(content, top: int) -> None:
    assert content, "no logprobs"
    for entry in content:
        assert isinstance(entry.token, str) and entry.logprob <= 0
        assert bytes(entry.bytes).decode("utf-8", errors="replace") == entry.token
        assert len(entry.top_logprobs) == top
        best = max(t.logprob for t in entry.top_logprobs)
        assert entry.logprob == pytest.approx(best, abs=1e-5)  # greedy: the most likely token
        assert entry.top_logprobs[0].token == entry.token


def test_chat_logprobs_whole_and_streamed_agree(client):
    kw = dict(model="default", messages=HELLO, max_tokens=8, logprobs=True, top_logprobs=3, **GREEDY)
    whole = client.chat.completions.create(**kw)
    content = whole.choices[0].logprobs.content
    assert len(content) == whole.usage.completion_tokens == 8
    _check_chat_logprobs(content, 3)
    streamed = []
    for chunk in client.chat.completions.create(stream=True, **kw):
        for choice in chunk.choices:
            if choice.logprobs is not None:
                streamed += choice.logprobs.content
    assert [(e.token, e.bytes) for e in streamed] == [(e.token, e.bytes) for e in content]
    assert [e.logprob for e in streamed] == pytest.approx([e.logprob for e in content], abs=1e-6)


def test_chat_without_logprobs_has_none(client):
    r = client.chat.completions.create(model="default", messages=HELLO, max_tokens=3, **GREEDY)
    assert r.choices[0].logprobs is None


def test_completion_echo_with_prompt_logprobs(client):
    prompt = "The capital of France is"
    r = client.completions.create(model="default", prompt=prompt, max_tokens=4, echo=True, logprobs=2, **GREEDY)
    choice = r.choices[0]
    assert choice.text.startswith(prompt)
    lp = choice.logprobs
    n = r.usage.prompt_tokens + r.usage.completion_tokens
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == len(lp.text_offset) == n
    assert lp.token_logprobs[0] is None and lp.top_logprobs[0] is None
    assert all(v is not None and v <= 0 for v in lp.token_logprobs[1:])
    assert "".join(lp.tokens[: r.usage.prompt_tokens]) == prompt
    assert lp.text_offset == sorted(lp.text_offset) and lp.text_offset[0] == 0
    generated = lp.token_logprobs[r.usage.prompt_tokens :]
    assert all(
        v == pytest.approx(max(top.values()), abs=1e-5) for v, top in zip(generated, lp.top_logprobs[-4:], strict=True)
    )


def test_completion_logprobs_streamed_equal_whole(client):
    kw = dict(model="default", prompt="Once upon a time", max_tokens=6, logprobs=1, echo=True, **GREEDY)
    whole = client.completions.create(**kw).choices[0]
    tokens, values, text = [], [], ""
    for chunk in client.completions.create(stream=True, **kw):
        for choice in chunk.choices:
            text += choice.text
            if choice.logprobs is not None:
                tokens += choice.logprobs.tokens
                values += choice.logprobs.token_logprobs
    assert text == whole.text
    assert tokens == whole.logprobs.tokens
    assert values[1:] == pytest.approx(whole.logprobs.token_logprobs[1:], abs=1e-6)


def test_completion_accepts_token_ids(client):
    ids = [785, 6722, 315, 9625, 374]
    r = client.completions.create(model="default", prompt=ids, max_tokens=2, **GREEDY)
    assert r.usage.prompt_tokens == len(ids)


def test_n_choices_share_one_prompt_charge(client):
    one = client.chat.completions.create(model="default", messages=HELLO, max_tokens=6, temperature=1.0)
    r = client.chat.completions.create(model="default", messages=HELLO, max_tokens=6, temperature=1.0, n=3)
    assert [c.index for c in r.choices] == [0, 1, 2]
    assert r.usage.prompt_tokens == one.usage.prompt_tokens
    assert r.usage.completion_tokens == 3 * 6  # a random model does not stop within 6 tokens
    assert len({c.message.content for c in r.choices}) > 1


def test_n_choices_stream_with_their_index(client):
    finishes, texts = {}, {0: "", 1: "", 2: ""}
    usage = None
    stream = client.chat.completions.create(
        model="default",
        messages=HELLO,
        max_tokens=5,
        n=3,
        stream=True,
        stream_options={"include_usage": True},
        **GREEDY,
    )
    for chunk in stream:
        usage = chunk.usage or usage
        for choice in chunk.choices:
            texts[choice.index] += choice.delta.content or ""
            if choice.finish_reason:
                finishes[choice.index] = choice.finish_reason
    assert finishes == {0: "length", 1: "length", 2: "length"}
    assert texts[0] == texts[1] == texts[2] != ""  # greedy: the same answer three times
    assert usage.completion_tokens == 15


def test_n_above_the_cap_is_refused(server):
    with server.http() as h:
        r = h.post("/v1/chat/completions", json={"model": "default", "messages": HELLO, "n": 4})
    assert assert_openai_error(r, 400)["param"] == "n"


def test_best_of_keeps_the_likeliest(client):
    r = client.completions.create(
        model="default", prompt="Tea is", max_tokens=4, best_of=3, n=1, logprobs=0, temperature=1.0
    )
    assert len(r.choices) == 1
    assert r.usage.completion_tokens == 12  # every sampled choice is charged
    assert math.isfinite(sum(r.choices[0].logprobs.token_logprobs))


def test_unknown_model_is_404(client):
    with pytest.raises(openai.NotFoundError) as info:
        client.chat.completions.create(model="no-such-model", messages=HELLO, max_tokens=2)
    assert info.value.body["code"] == "model_not_found"


def test_every_listed_model_is_served(client):
    names = [m.id for m in client.models.list().data]
    assert "default" in names
    for name in names:
        r = client.completions.create(model=name, prompt="hi", max_tokens=1, **GREEDY)
        assert r.model == client.models.list().data[0].id  # responses name the model they ran


def test_tokenize_and_detokenize_round_trip(server):
    with server.http() as h:
        pieces = h.post("/tokenize", json={"content": "Hello world", "with_pieces": True}).json()
        ids = [t["id"] for t in pieces["tokens"]]
        assert "".join(t["piece"] for t in pieces["tokens"]) == "Hello world"
        assert pieces["count"] == len(ids) and pieces["max_model_len"] == 1024
        assert h.post("/tokenize", json={"prompt": "Hello world"}).json()["tokens"] == ids
        assert h.post("/detokenize", json={"tokens": ids}).json() == {"content": "Hello world", "prompt": "Hello world"}
        assert_openai_error(h.post("/detokenize", json={"tokens": [10**7]}), 400)


def test_tokenize_messages_counts_what_a_chat_turn_charges(client, server):
    usage = client.chat.completions.create(model="default", messages=HELLO, max_tokens=1, **GREEDY).usage
    with server.http() as h:
        whole = h.post("/tokenize", json={"messages": HELLO}).json()
        bare = h.post("/tokenize", json={"messages": HELLO, "add_generation_prompt": False}).json()
    assert whole["count"] == usage.prompt_tokens
    assert bare["tokens"] == whole["tokens"][: bare["count"]] and bare["count"] < whole["count"]


def test_best_of_streamed_sends_the_chosen_choice(server):
    body = {"model": "default", "prompt": "Tea is", "max_tokens": 3, "best_of": 2, "stream": True, "temperature": 1.0}
    with server.http() as h, h.stream("POST", "/v1/completions", json=body) as r:
        events = list(sse_events(r))
    assert events[-1] == "[DONE]"
    (chunk,) = events[:-1]
    (choice,) = chunk["choices"]
    assert choice["index"] == 0 and choice["text"] and choice["finish_reason"] == "length"
    assert choice.get("logprobs") is None  # used for the ranking, not asked for
