"""Slots, queue, cancellation, prefix cache and Prometheus metrics of `qwenkit serve`.

One slot (`--parallel 1`) and a one-request queue (`--max-queue 1`), so a request that is not
cancelled when its client leaves would visibly block the next one, and the queue bound is
reached with a handful of requests. Every wait is a bounded poll; nothing asserts on timings.
"""

from __future__ import annotations

import concurrent.futures as cf
import json
import socket
import threading

import httpx
import openai
import pytest
from serve_helpers import assert_openai_error, metric_families, sse_events, start_server

HELLO = [{"role": "user", "content": "Tell me a long story."}]
LONG = 1900  # tokens: far more than any test waits for (the context is 2048)
COMPLETIONS_200 = {"route": "/v1/completions", "status": "200"}


@pytest.fixture(scope="module")
def server(tiny_qwen2):
    with start_server(tiny_qwen2, "--max-queue", "1", parallel=1) as s:
        yield s


def _idle(server) -> None:
    """Wait (bounded) until nothing runs or waits, so each test starts from a free slot."""
    server.wait_metric("qwenkit_requests_running", lambda v: v == 0, timeout_s=60)
    server.wait_metric("qwenkit_requests_waiting", lambda v: v == 0, timeout_s=60)


def _open_stream(server, client: httpx.Client, max_tokens: int = LONG, **extra) -> tuple[httpx.Response, object]:
    body = {"messages": HELLO, "max_tokens": max_tokens, "stream": True, **extra}
    response = client.send(client.build_request("POST", "/v1/chat/completions", json=body), stream=True)
    return response, sse_events(response)


def _read_tokens(events, n: int) -> None:
    """Read events until `n` of them carried generated text (the request holds the slot)."""
    seen = 0
    for event in events:
        assert isinstance(event, dict) and "error" not in event, event
        if event["choices"] and event["choices"][0]["delta"].get("content"):
            seen += 1
            if seen >= n:
                return
    raise AssertionError("the stream ended early")


def test_client_disconnect_mid_stream_frees_the_slot(server):
    _idle(server)
    cancelled0 = server.metric("qwenkit_requests_cancelled_total")
    with server.http() as h:
        response, events = _open_stream(server, h)
        assert response.status_code == 200
        _read_tokens(events, 2)
        assert server.metric("qwenkit_requests_running") == 1
        response.close()  # the client goes away mid-stream
    running = server.wait_metric("qwenkit_requests_running", lambda v: v == 0, timeout_s=30)
    assert running == 0
    cancelled = server.wait_metric("qwenkit_requests_cancelled_total", lambda v: v >= cancelled0 + 1)
    assert cancelled == cancelled0 + 1
    # The only slot is free again: a short request completes (it would otherwise wait for
    # the abandoned ~1900-token generation; the client timeout bounds the wait).
    with server.client(timeout=60) as c:
        r = c.chat.completions.create(model="default", messages=HELLO, max_tokens=3)
    assert r.usage.completion_tokens == 3
    assert server.metric("qwenkit_requests_waiting") == 0


def test_client_disconnect_non_streamed_is_cancelled(server):
    _idle(server)
    cancelled0 = server.metric("qwenkit_requests_cancelled_total")
    ttft0 = server.metric("qwenkit_time_to_first_token_seconds_count")
    body = json.dumps({"messages": HELLO, "max_tokens": LONG}).encode()
    request = (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        sock.sendall(request)
        # Generating: the only slot is held (a non-streamed reply's chunks reach the HTTP side,
        # and its TTFT the metrics, only when it ends).
        assert server.wait_metric("qwenkit_requests_running", lambda v: v == 1, timeout_s=60) == 1
        assert server.metric("qwenkit_time_to_first_token_seconds_count") == ttft0
    # The socket is closed: the server notices, cancels, and frees the slot.
    assert server.wait_metric("qwenkit_requests_running", lambda v: v == 0, timeout_s=30) == 0
    assert server.wait_metric("qwenkit_requests_cancelled_total", lambda v: v >= cancelled0 + 1) == cancelled0 + 1
    closed = server.wait_metric("qwenkit_requests_total", lambda v: v >= 1, route="/v1/chat/completions", status="499")
    assert closed >= 1


def test_queue_bound_answers_429_then_serves_the_queued(server):
    _idle(server)
    busy0 = server.metric("qwenkit_requests_total", route="/v1/chat/completions", status="429")
    queued: dict = {}

    def wait_in_queue() -> None:
        with httpx.Client(base_url=server.url, timeout=120) as c:
            queued["response"] = c.post("/v1/chat/completions", json={"messages": HELLO, "max_tokens": 4})

    with server.http() as h:
        holder, events = _open_stream(server, h)  # takes the only slot
        assert holder.status_code == 200
        _read_tokens(events, 1)
        waiter = threading.Thread(target=wait_in_queue)
        waiter.start()
        assert server.wait_metric("qwenkit_requests_waiting", lambda v: v == 1, timeout_s=60) == 1
        # Slot busy, queue full: refused at once, streamed or not, with Retry-After and a JSON
        # error (a streamed request must not get a 200 and then a broken stream).
        refused = [
            h.post("/v1/chat/completions", json={"messages": HELLO, "max_tokens": 4}),
            h.post("/v1/chat/completions", json={"messages": HELLO, "max_tokens": 4, "stream": True}),
            h.post("/v1/completions", json={"prompt": "hi", "max_tokens": 4, "stream": True}),
        ]
        with server.client() as c, pytest.raises(openai.RateLimitError):
            c.chat.completions.create(model="default", messages=HELLO, max_tokens=4)
        holder.close()  # free the slot: the queued request runs now
    waiter.join(timeout=120)
    for r in refused:
        error = assert_openai_error(r, 429)
        assert error["code"] == "server_busy" and error["type"] == "rate_limit_error"
        assert int(r.headers["retry-after"]) >= 1
    assert queued["response"].status_code == 200, queued["response"].text
    assert queued["response"].json()["usage"]["completion_tokens"] == 4
    assert "RuntimeError" not in server.log() and "Traceback" not in server.log()
    # Counted per route template and status.
    busy = server.wait_metric(
        "qwenkit_requests_total", lambda v: v >= busy0 + 3, route="/v1/chat/completions", status="429"
    )
    assert busy == busy0 + 3


def test_queue_bound_with_concurrent_long_requests(server):
    _idle(server)

    start = threading.Barrier(4)

    def one(i: int) -> httpx.Response:
        # no speculation: the tiny model's repetitive text would be drafted so fast that the first
        # request could finish before the others arrive
        body = {
            "messages": [{"role": "user", "content": f"story {i}"}],
            "max_tokens": 200,
            "stream": i % 2 == 1,
            "speculative": False,
        }
        with httpx.Client(base_url=server.url, timeout=180) as c:
            start.wait(timeout=60)  # all four go out together
            return c.post("/v1/chat/completions", json=body)

    with cf.ThreadPoolExecutor(4) as pool:
        responses = list(pool.map(one, range(4)))
    statuses = [r.status_code for r in responses]
    assert all(s in (200, 429) for s in statuses), statuses  # no 5xx, no broken stream
    assert statuses.count(429) >= 1, statuses
    assert statuses.count(200) >= 1, statuses
    for r in responses:
        if r.status_code == 429:
            assert int(r.headers["retry-after"]) >= 1
            assert r.json()["error"]["code"] == "server_busy"
        elif r.headers["content-type"].startswith("text/event-stream"):
            assert r.text.rstrip().endswith("data: [DONE]") and '"error"' not in r.text
    assert server.healthy()


def test_prefix_cache_hits_on_a_shared_system_prompt(server):
    _idle(server)
    system = {
        "role": "system",
        "content": "You are a meticulous assistant. "
        + " ".join(f"Rule {i}: answer carefully about topic number {i}." for i in range(40)),
    }
    hits0 = server.metric("qwenkit_prefix_cache_hit_tokens_total")
    with server.client() as c:
        first = c.chat.completions.create(
            model="default", messages=[system, {"role": "user", "content": "apples"}], max_tokens=2, temperature=0
        )
        hits1 = server.metric("qwenkit_prefix_cache_hit_tokens_total")
        second = c.chat.completions.create(
            model="default", messages=[system, {"role": "user", "content": "pears"}], max_tokens=2, temperature=0
        )
    hits2 = server.metric("qwenkit_prefix_cache_hit_tokens_total")
    assert first.usage.prompt_tokens > 400
    # The second request reused (nearly) the whole system prompt from the first one's cache.
    assert hits2 - hits1 >= first.usage.prompt_tokens - 20, (hits0, hits1, hits2, first.usage)
    assert second.usage.prompt_tokens > 400
    cached = second.usage.prompt_tokens_details.cached_tokens
    assert first.usage.prompt_tokens - 20 <= cached < second.usage.prompt_tokens


def test_metrics_expose_the_required_families(server):
    _idle(server)
    before = server.metrics()
    # /v1/completions: no other test here completes one, so its 200 count moves only now.
    with server.client() as c:
        r = c.completions.create(model="default", prompt="metrics are", max_tokens=5, temperature=0)
    server.wait_metric(
        "qwenkit_requests_total",
        lambda v: v > before.get('qwenkit_requests_total{route="/v1/completions",status="200"}', 0),
        **COMPLETIONS_200,
    )
    text = server.metrics_text()
    families = metric_families(text)
    required = {
        "qwenkit_requests_total": "counter",  # by route and status
        "qwenkit_prompt_tokens_total": "counter",
        "qwenkit_generation_tokens_total": "counter",
        "qwenkit_time_to_first_token_seconds": "histogram",
        "qwenkit_inter_token_latency_seconds": "histogram",
        "qwenkit_e2e_request_latency_seconds": "histogram",
        "qwenkit_requests_running": "gauge",
        "qwenkit_requests_waiting": "gauge",
        "qwenkit_prefix_cache_hit_tokens_total": "counter",
        "qwenkit_kv_cache_usage_ratio": "gauge",
        "qwenkit_requests_cancelled_total": "counter",
    }
    assert set(required) <= families, set(required) - families
    for name, kind in required.items():
        assert f"# TYPE {name} {kind}" in text, name
    after = server.metrics()

    def grew(key: str) -> float:
        return after.get(key, 0) - before.get(key, 0)

    assert grew("qwenkit_prompt_tokens_total") == r.usage.prompt_tokens
    assert grew("qwenkit_generation_tokens_total") == r.usage.completion_tokens
    assert grew("qwenkit_time_to_first_token_seconds_count") == 1
    assert grew("qwenkit_inter_token_latency_seconds_count") == r.usage.completion_tokens - 1
    assert grew("qwenkit_e2e_request_latency_seconds_count") == 1
    assert grew('qwenkit_requests_total{route="/v1/completions",status="200"}') == 1
    assert after["qwenkit_requests_running"] == 0 and after["qwenkit_requests_waiting"] == 0
    assert 0 < after["qwenkit_kv_cache_usage_ratio"] <= 1
    assert "/v1/models" not in "".join(k for k in after if 'status="404"' in k)  # no raw paths as labels


def test_unknown_paths_do_not_create_label_series(server):
    for i in range(3):
        httpx.get(f"{server.url}/v1/random-{i}", timeout=10)
    text = server.metrics_text()
    assert "random-" not in text
    assert 'route="unmatched",status="404"' in text
