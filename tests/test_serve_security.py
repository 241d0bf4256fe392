"""API keys and rate limits of `qwenkit serve`, seen by the official `openai` client.

Keys come from `--api-key`, `--api-key-file` (one per line, `#` comments) and the
QWENKIT_API_KEYS environment variable; every /v1 route needs one, /health never does.
Rate limits are per key (per client address without keys): requests and tokens per minute.
"""

from __future__ import annotations

import time

import httpx
import openai
import pytest
from serve_helpers import assert_openai_error, start_server

HELLO = [{"role": "user", "content": "hi"}]
GREEDY = {"temperature": 0, "seed": 1}

V1_ROUTES = [
    ("GET", "/v1/models", None),
    ("POST", "/v1/chat/completions", {"messages": HELLO, "max_tokens": 1}),
    ("POST", "/v1/completions", {"prompt": "hi", "max_tokens": 1}),
]


@pytest.fixture(scope="module")
def auth_server(tiny_qwen2, tmp_path_factory):
    key_file = tmp_path_factory.mktemp("keys") / "keys.txt"
    key_file.write_text("# a comment, not a key\nk2-from-file\n\n  k2b-from-file  \n")
    with start_server(
        tiny_qwen2,
        "--api-key",
        "k1-from-flag",
        "--api-key-file",
        str(key_file),
        env={"QWENKIT_API_KEYS": "k3-from-env, k4-from-env"},
        parallel=1,
    ) as s:
        yield s


# ----- authentication ------------------------------------------------------------------------


@pytest.mark.parametrize(("method", "path", "body"), V1_ROUTES, ids=[r[1] for r in V1_ROUTES])
@pytest.mark.parametrize(
    "header",
    [
        None,
        "Bearer wrong-key",
        "Bearer",
        "Basic azE6azE=",
        "k1-from-flag",
        "Bearer k1-from-flag-but-longer",
        "Bearer # a comment, not a key",
    ],
    ids=["missing", "wrong", "empty", "basic", "no-scheme", "prefix", "comment-line"],
)
def test_missing_or_wrong_key_is_401(auth_server, method, path, body, header):
    headers = {"Authorization": header} if header is not None else {}
    r = httpx.request(method, auth_server.url + path, json=body, headers=headers, timeout=30)
    error = assert_openai_error(r, 401)
    assert error["type"] == "authentication_error"
    assert error["code"] == "invalid_api_key"
    assert r.headers.get("www-authenticate", "").lower().startswith("bearer")


def test_openai_client_raises_authentication_error(auth_server):
    with auth_server.client(api_key="not-a-key") as c:
        with pytest.raises(openai.AuthenticationError) as info:
            c.models.list()
        assert info.value.status_code == 401
        with pytest.raises(openai.AuthenticationError):
            c.chat.completions.create(model="default", messages=HELLO, max_tokens=1)
        with pytest.raises(openai.AuthenticationError):
            c.chat.completions.create(model="default", messages=HELLO, max_tokens=1, stream=True)
        with pytest.raises(openai.AuthenticationError):
            c.completions.create(model="default", prompt="hi", max_tokens=1)


@pytest.mark.parametrize("key", ["k1-from-flag", "k2-from-file", "k2b-from-file", "k3-from-env", "k4-from-env"])
def test_every_configured_key_works(auth_server, key):
    with auth_server.client(api_key=key) as c:
        assert "default" in [m.id for m in c.models.list().data]


def test_right_key_works_on_every_route(auth_server):
    with auth_server.client(api_key="k2-from-file") as c:
        r = c.chat.completions.create(model="default", messages=HELLO, max_tokens=2, **GREEDY)
        assert r.usage.completion_tokens == 2
        chunks = list(c.chat.completions.create(model="default", messages=HELLO, max_tokens=2, stream=True, **GREEDY))
        assert chunks[-1].choices[0].finish_reason == "length"
        t = c.completions.create(model="default", prompt="hi", max_tokens=2, **GREEDY)
        assert t.usage.completion_tokens == 2


def test_unauthenticated_bad_body_is_still_401(auth_server):
    # Nobody without a key learns anything about request validation.
    for content in (b'{"messages": "not a list"}', b'{"messages": []}', b"{not json", b"", b"[]"):
        r = httpx.post(
            f"{auth_server.url}/v1/chat/completions",
            content=content,
            headers={"content-type": "application/json"},
            timeout=30,
        )
        assert_openai_error(r, 401)
        # With a valid key, the same bodies are plain 400s.
        r = httpx.post(
            f"{auth_server.url}/v1/chat/completions",
            content=content,
            headers={"content-type": "application/json", "Authorization": "Bearer k1-from-flag"},
            timeout=30,
        )
        assert_openai_error(r, 400)


def test_health_needs_no_key(auth_server):
    r = httpx.get(f"{auth_server.url}/health", timeout=10)
    assert r.status_code == 200 and r.json() == {"status": "ok"}


def test_key_never_logged(auth_server):
    with auth_server.client(api_key="k3-from-env") as c:
        c.models.list()
    log = auth_server.log()
    for key in ("k1-from-flag", "k2-from-file", "k3-from-env", "k4-from-env", "wrong-key"):
        assert key not in log


# ----- rate limits ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def rpm_server(app_server, tiny_qwen2):
    return app_server(tiny_qwen2, parallel=1, api_keys=frozenset({"alpha", "beta"}), requests_per_minute=3)


def test_requests_per_minute(rpm_server):
    with rpm_server.client(api_key="alpha") as c:
        c.models.list()
        c.chat.completions.create(model="default", messages=HELLO, max_tokens=1)
        c.completions.create(model="default", prompt="hi", max_tokens=1)
        with pytest.raises(openai.RateLimitError) as info:
            c.models.list()
    response = info.value.response
    assert response.status_code == 429
    retry = int(response.headers["retry-after"])
    assert 1 <= retry <= 60
    error = response.json()["error"]
    assert error["type"] == "rate_limit_error" and error["code"] == "rate_limit_exceeded"
    # Streamed requests are refused up front too, with a proper 429.
    r = rpm_server.post(
        "/v1/chat/completions",
        headers={"Authorization": "Bearer alpha"},
        json={"messages": HELLO, "max_tokens": 1, "stream": True},
        timeout=30,
    )
    assert_openai_error(r, 429)
    assert "retry-after" in r.headers


def test_rate_limits_are_per_key(rpm_server):
    with rpm_server.client(api_key="beta") as c:
        assert c.models.list().data
    # An unknown key is an authentication failure, not a rate-limit one.
    with rpm_server.client(api_key="gamma") as c, pytest.raises(openai.AuthenticationError):
        c.models.list()


def test_rate_limit_leaves_health_open(rpm_server):
    for _ in range(5):
        assert rpm_server.get("/health", timeout=10).status_code == 200


@pytest.fixture(scope="module")
def tpm_server(app_server, tiny_qwen2):
    return app_server(tiny_qwen2, parallel=1, tokens_per_minute=40)


def test_tokens_per_minute(tpm_server):
    with tpm_server.client() as c:
        r = c.chat.completions.create(model="default", messages=HELLO, max_tokens=40, **GREEDY)
        assert r.usage.total_tokens > 40  # the first request may overshoot; it is counted after
        with pytest.raises(openai.RateLimitError) as info:
            c.chat.completions.create(model="default", messages=HELLO, max_tokens=1)
        assert 1 <= int(info.value.response.headers["retry-after"]) <= 60
        with pytest.raises(openai.RateLimitError):
            list(c.chat.completions.create(model="default", messages=HELLO, max_tokens=1, stream=True))
        with pytest.raises(openai.RateLimitError):
            c.completions.create(model="default", prompt="hi", max_tokens=1)
    assert tpm_server.healthy()


@pytest.mark.parametrize("flag", [False, True])
def test_prompt_text_is_logged_only_with_log_prompts(app_server, tiny_qwen2, flag):
    secret = f"MY-PRIVATE-PROMPT-TEXT-{flag}"
    s = app_server(tiny_qwen2, parallel=1, **({"log_prompts": True} if flag else {}))
    with s.client() as c:
        c.chat.completions.create(model="default", messages=[{"role": "user", "content": secret}], max_tokens=2)
    for _ in range(50):  # the access line is written once the response is sent: bounded wait
        if "POST /v1/chat/completions 200" in s.log():
            break
        time.sleep(0.1)
    log = s.log()
    assert "POST /v1/chat/completions 200" in log
    assert (secret in log) == flag
