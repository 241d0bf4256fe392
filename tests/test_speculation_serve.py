"""Speculative decoding through the server: OpenAI's accepted/rejected prediction token counts in
chat and completions usage (whole and streamed), the per-request `speculative` override, the
Prometheus counters, and bad values refused with a 400. The real Qwen2.5-Coder-0.5B copies code."""

from __future__ import annotations

import inspect
import textwrap

import pytest
from serve_helpers import assert_openai_error, sse_events, start_server

pytestmark = pytest.mark.integration

CODE = textwrap.dedent(inspect.getsource(textwrap.TextWrapper._split))
EDIT = f"Rename the variable `chunks` to `pieces`:\n```python\n{CODE}```\nReply with the whole changed code only."
GREEDY = {"temperature": 0, "max_tokens": 80}


@pytest.fixture(scope="module")
def server(source_gguf):
    with start_server(source_gguf, "--draft-max", "6", parallel=1, threads=2) as s:
        yield s


@pytest.fixture(scope="module")
def http(server):
    with server.http(timeout=300) as c:
        yield c


def chat(http, **extra):
    body = {"messages": [{"role": "user", "content": EDIT}], **GREEDY, **extra}
    r = http.post("/v1/chat/completions", json=body)
    assert r.status_code == 200, r.text
    return r.json()


def test_chat_usage_reports_predictions_and_the_override_turns_it_off(server, http):
    drafted_before = server.metric("qwenkit_spec_drafted_tokens_total")
    on, off = chat(http), chat(http, speculative=False)
    assert on["choices"][0]["message"]["content"] == off["choices"][0]["message"]["content"]
    details_on, details_off = on["usage"]["completion_tokens_details"], off["usage"]["completion_tokens_details"]
    assert details_on["accepted_prediction_tokens"] > 10
    assert details_off["accepted_prediction_tokens"] == details_off["rejected_prediction_tokens"] == 0
    drafted = details_on["accepted_prediction_tokens"] + details_on["rejected_prediction_tokens"]
    assert server.metric("qwenkit_spec_drafted_tokens_total") - drafted_before == drafted
    assert server.metric("qwenkit_spec_accepted_tokens_total") >= details_on["accepted_prediction_tokens"]


def test_a_draft_length_in_the_body_and_streamed_usage(http):
    whole = chat(http, speculative=2)
    body = {
        "messages": [{"role": "user", "content": EDIT}],
        **GREEDY,
        "speculative": 2,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    with http.stream("POST", "/v1/chat/completions", json=body) as r:
        events = [e for e in sse_events(r) if e != "[DONE]"]
    text = "".join(c["delta"].get("content") or "" for e in events for c in e["choices"])
    assert text == whole["choices"][0]["message"]["content"]
    usage = events[-1]["usage"]["completion_tokens_details"]
    assert usage == whole["usage"]["completion_tokens_details"]
    assert usage["accepted_prediction_tokens"] > 0


def test_completions_usage_reports_predictions(http):
    prompt = f"# {CODE}\n# The same code again:\n"
    r = http.post("/v1/completions", json={"prompt": prompt, **GREEDY})
    assert r.status_code == 200, r.text
    assert r.json()["usage"]["completion_tokens_details"]["accepted_prediction_tokens"] > 0


@pytest.mark.parametrize("value", ["yes", 65, -1, 2.5])
def test_bad_speculative_values_are_a_400(http, value):
    body = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2, "speculative": value}
    error = assert_openai_error(http.post("/v1/chat/completions", json=body), 400)
    assert "speculative" in error["message"] or error["param"] == "speculative"
