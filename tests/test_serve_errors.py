"""Bad requests to `qwenkit serve`: each gets a 4xx in OpenAI's error shape, with no internals,
and the server stays healthy and keeps answering afterwards.
"""

from __future__ import annotations

import json

import httpx
import openai
import pytest
from serve_helpers import assert_openai_error

MAX_BODY = 4096
HELLO = [{"role": "user", "content": "hi"}]


@pytest.fixture(scope="module")
def server(app_server, tiny_qwen2):
    return app_server(tiny_qwen2, parallel=1, max_body_bytes=MAX_BODY, max_tokens_cap=4096)


def _post(server, path: str, content: bytes | str, **headers) -> httpx.Response:
    headers = {"content-type": "application/json", **headers}
    return server.post(path, content=content, headers=headers, timeout=60)


def _chat(**fields) -> str:
    return json.dumps({"messages": HELLO, "max_tokens": 2, **fields})


BAD_CHAT_BODIES = {
    "malformed-json": '{"messages": [{"role": "user", "content": "hi"}',
    "not-json-at-all": "hello there",
    "json-array": "[]",
    "json-string": '"messages"',
    "empty-body": "",
    "messages-missing": "{}",
    "messages-not-a-list": '{"messages": "hi"}',
    "message-not-an-object": '{"messages": ["hi"]}',
    "content-wrong-type": '{"messages": [{"role": "user", "content": 5}]}',
    "empty-messages": '{"messages": []}',
    "unknown-role": '{"messages": [{"role": "wizard", "content": "hi"}]}',
    "role-missing": '{"messages": [{"content": "hi"}]}',
    "n-2": _chat(n=2),
    "temperature-5": _chat(temperature=5),
    "temperature-negative": _chat(temperature=-1),
    "temperature-string": _chat(temperature="hot"),
    "temperature-nan": '{"messages": [{"role": "user", "content": "hi"}], "temperature": NaN}',
    "top-p-0": _chat(top_p=0),
    "max-tokens-0": _chat(max_tokens=0),
    "max-tokens-string": _chat(max_tokens="many"),
    "max-tokens-over-cap": _chat(max_tokens=100_000),
    "stream-not-bool": _chat(stream="sometimes"),
    "stop-empty-string": _chat(stop=[""]),
    "stop-too-many": _chat(stop=[str(i) for i in range(20)]),
    "logit-bias-bad-key": _chat(logit_bias={"abc": 1}),
    "logit-bias-out-of-vocab": _chat(logit_bias={"99999999": 1}),
    "tool-choice-without-tools": _chat(tool_choice="required"),
    "tool-choice-unknown-tool": _chat(
        tools=[{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}],
        tool_choice={"type": "function", "function": {"name": "g"}},
    ),
    "tool-choice-bad-string": _chat(tool_choice="sometimes"),
    "tools-not-a-list": _chat(tools={"name": "f"}),
    "json-schema-missing": _chat(response_format={"type": "json_schema"}),
    "response-format-unknown": _chat(response_format={"type": "yaml"}),
    "schema-unsupported": _chat(
        response_format={
            "type": "json_schema",
            "json_schema": {"name": "x", "schema": {"type": "object", "properties": {"a": {"type": "no-such-type"}}}},
        }
    ),
    "enable-thinking-not-bool": _chat(chat_template_kwargs={"enable_thinking": "yes"}),
}


@pytest.mark.parametrize("body", list(BAD_CHAT_BODIES.values()), ids=list(BAD_CHAT_BODIES))
def test_bad_chat_request_is_400(server, body):
    error = assert_openai_error(_post(server, "/v1/chat/completions", body), 400)
    assert error["type"] == "invalid_request_error"


BAD_COMPLETION_BODIES = {
    "prompt-missing": '{"max_tokens": 2}',
    "prompt-empty": '{"prompt": "", "max_tokens": 2}',
    "two-prompts": '{"prompt": ["a", "b"], "max_tokens": 2}',
    "prompt-wrong-type": '{"prompt": 5, "max_tokens": 2}',
    "n-2": '{"prompt": "a", "n": 2}',
    "malformed": '{"prompt": ',
}


@pytest.mark.parametrize("body", list(BAD_COMPLETION_BODIES.values()), ids=list(BAD_COMPLETION_BODIES))
def test_bad_completion_request_is_400(server, body):
    assert_openai_error(_post(server, "/v1/completions", body), 400)


def test_validation_error_names_the_field(server):
    error = assert_openai_error(_post(server, "/v1/chat/completions", _chat(temperature=5)), 400)
    assert error["param"] == "temperature"
    error = assert_openai_error(_post(server, "/v1/chat/completions", '{"messages": [{"role": "x"}]}'), 400)
    assert error["param"].startswith("messages.0")


def test_openai_client_sees_bad_request(server):
    with server.client() as c:
        with pytest.raises(openai.BadRequestError) as info:
            c.chat.completions.create(model="default", messages=HELLO, n=2)
        assert info.value.status_code == 400
        with pytest.raises(openai.BadRequestError):
            c.chat.completions.create(model="default", messages=HELLO, temperature=5)
        with pytest.raises(openai.BadRequestError):
            c.chat.completions.create(model="default", messages=[])
        with pytest.raises(openai.BadRequestError):
            c.chat.completions.create(model="default", messages=[{"role": "wizard", "content": "hi"}])
        with pytest.raises(openai.BadRequestError):  # streamed: refused before the stream starts
            c.chat.completions.create(model="default", messages=HELLO, n=2, stream=True)


def test_prompt_longer_than_context(server):
    long = "7" * 2400  # Qwen splits digits: ~2400 tokens > --ctx 2048, in a body under --max-body-bytes
    r = _post(
        server, "/v1/chat/completions", json.dumps({"messages": [{"role": "user", "content": long}], "max_tokens": 2})
    )
    error = assert_openai_error(r, 400)
    assert error["code"] == "context_length_exceeded"
    r = _post(
        server,
        "/v1/chat/completions",
        json.dumps({"messages": [{"role": "user", "content": long}], "max_tokens": 2, "stream": True}),
    )
    assert assert_openai_error(r, 400)["code"] == "context_length_exceeded"
    r = _post(server, "/v1/completions", json.dumps({"prompt": long, "max_tokens": 2}))
    error = assert_openai_error(r, 400)
    assert error["code"] == "context_length_exceeded"
    assert error["param"] == "prompt"
    with server.client() as c, pytest.raises(openai.BadRequestError) as info:
        c.chat.completions.create(model="default", messages=[{"role": "user", "content": long}], max_tokens=2)
    assert info.value.code == "context_length_exceeded"


# ----- body size -----------------------------------------------------------------------------


def _oversized() -> bytes:
    return json.dumps({"messages": [{"role": "user", "content": "x" * (MAX_BODY * 3)}]}).encode()


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/completions"])
def test_oversized_body_with_content_length_is_413(server, path):
    r = server.post(path, content=_oversized(), headers={"content-type": "application/json"}, timeout=60)
    error = assert_openai_error(r, 413)
    assert str(MAX_BODY) in error["message"]


def test_oversized_body_chunked_is_413(server):
    data = _oversized()

    def chunks():
        for i in range(0, len(data), 1000):
            yield data[i : i + 1000]

    r = server.post("/v1/chat/completions", content=chunks(), headers={"content-type": "application/json"}, timeout=60)
    assert "content-length" not in r.request.headers  # really sent chunked
    assert r.request.headers.get("transfer-encoding") == "chunked"
    assert_openai_error(r, 413)


def test_body_just_under_the_limit_is_accepted(server):
    filler = "y" * (MAX_BODY - 300)
    body = json.dumps({"messages": [{"role": "user", "content": filler}], "max_tokens": 1}).encode()
    assert len(body) < MAX_BODY
    r = server.post("/v1/chat/completions", content=body, headers={"content-type": "application/json"}, timeout=120)
    assert r.status_code == 200, r.text


def test_oversized_body_through_openai_client(server):
    with server.client() as c, pytest.raises(openai.APIStatusError) as info:
        c.chat.completions.create(
            model="default", messages=[{"role": "user", "content": "z" * MAX_BODY * 2}], max_tokens=1
        )
    assert info.value.status_code == 413


# ----- routes --------------------------------------------------------------------------------


def test_unknown_route_and_wrong_method(server):
    assert_openai_error(server.get("/v1/no-such-thing", timeout=10), 404)
    assert_openai_error(server.get("/v1/chat/completions", timeout=10), 405)


# ----- afterwards ----------------------------------------------------------------------------


def test_server_still_healthy_after_all_that(server):
    # Runs last in this module, and replays the whole barrage so it also stands alone.
    before = server.metrics()
    for body in BAD_CHAT_BODIES.values():
        assert _post(server, "/v1/chat/completions", body).status_code == 400
    for body in BAD_COMPLETION_BODIES.values():
        assert _post(server, "/v1/completions", body).status_code == 400
    assert (
        server.post(
            "/v1/chat/completions",
            content=iter([_oversized()]),
            headers={"content-type": "application/json"},
            timeout=60,
        ).status_code
        == 413
    )
    assert _post(server, "/v1/completions", _oversized()).status_code == 413
    r = server.get("/health", timeout=10)
    assert r.status_code == 200 and r.json() == {"status": "ok"}
    with server.client() as c:
        ok = c.chat.completions.create(model="default", messages=HELLO, max_tokens=3, temperature=0)
        assert ok.usage.completion_tokens == 3
        chunks = list(c.chat.completions.create(model="default", messages=HELLO, max_tokens=3, stream=True))
        assert chunks[-1].choices[0].finish_reason == "length"
    n413 = before.get('qwenkit_requests_total{route="unmatched",status="413"}', 0)
    server.wait_metric("qwenkit_requests_total", lambda v: v >= n413 + 2, route="unmatched", status="413")
    metrics = server.metrics()

    def grew(key: str) -> float:
        return metrics.get(key, 0) - before.get(key, 0)

    assert grew('qwenkit_requests_total{route="/v1/chat/completions",status="400"}') == len(BAD_CHAT_BODIES)
    assert grew('qwenkit_requests_total{route="/v1/completions",status="400"}') == len(BAD_COMPLETION_BODIES)
    assert grew('qwenkit_requests_total{route="unmatched",status="413"}') == 2
    server_errors = {
        k: v
        for k, v in metrics.items()
        if k.startswith("qwenkit_requests_total") and 'status="5' in k and "/health" not in k
    }
    assert not server_errors, server_errors
    assert metrics["qwenkit_requests_running"] == 0
    assert "Traceback" not in server.log()
