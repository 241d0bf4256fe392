"""`qwenkit loadtest` against a live `qwenkit serve` on 127.0.0.1 (the real embedded model), and
its bookkeeping on its own: every outcome is checked against the server's own counters."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest
from serve_helpers import free_port, slot_held, start_server

from qwenkit.bench.loadtest import LoadConfig, Outcome, api_base, read_prompts, run_loadtest, summarize
from qwenkit.errors import QwenkitError

CLI = [sys.executable, "-c", "from qwenkit.cli import main; main()"]
CHAT = "/v1/chat/completions"


def test_summary_counts_every_outcome_by_kind():
    outcomes = [
        Outcome("ok", tokens=10, ttft_s=0.5, e2e_s=1.4, gaps_s=[0.1] * 9),
        Outcome("ok", tokens=10, ttft_s=1.5, e2e_s=2.4, gaps_s=[0.1] * 9),
        Outcome("cancelled", tokens=3, ttft_s=0.7, gaps_s=[0.2, 0.2]),
        Outcome("http_429"),
        Outcome("http_429"),
        Outcome("cut_stream", tokens=2),
    ]
    s = summarize(4, outcomes, wall_s=2.0)
    assert (s["requests_sent"], s["completed"], s["cancelled_by_client"]) == (6, 2, 1)
    assert s["errors"] == {"cut_stream": 1, "http_429": 2}
    assert s["generated_tokens"] == 23 and s["tokens_per_s"] == 11.5 and s["requests_per_s"] == 1.0
    assert s["e2e_latency_s"]["p50"] == pytest.approx(1.9) and s["ttft_s"]["p50"] == pytest.approx(0.7)
    assert s["time_per_output_token_s"]["p50"] == pytest.approx(0.1)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(urls=()), "at least one server"),
        (dict(labels=("a", "b")), "--label given 2"),
        (dict(cancel_fraction=0.5), "needs --stream"),
        (dict(cancel_fraction=2.0, stream=True), "between 0 and 1"),
        (dict(concurrency=(0,)), "--concurrency"),
    ],
)
def test_config_refuses_nonsense(kwargs, message):
    with pytest.raises(QwenkitError, match=message):
        LoadConfig(**{"urls": ("http://127.0.0.1:1",), **kwargs})


def test_urls_and_prompt_files(tmp_path):
    assert api_base("http://h:8000/") == "http://h:8000/v1"
    assert api_base("http://h:8000/v1") == "http://h:8000/v1"
    with pytest.raises(QwenkitError, match="not an http"):
        api_base("h:8000")
    f = tmp_path / "prompts.txt"
    f.write_text("one\n\n  two  \n")
    assert read_prompts(f) == ("one", "two")
    f.write_text("\n")
    with pytest.raises(QwenkitError, match="no prompts"):
        read_prompts(f)


def test_dead_server_is_one_clear_error():
    url = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(QwenkitError, match="cannot reach"):
        asyncio.run(run_loadtest(LoadConfig(urls=(url,), concurrency=(1,), requests=1)))
    # with the model named, every request is sent and fails as a connection error
    result = asyncio.run(run_loadtest(LoadConfig(urls=(url,), model="m", concurrency=(2,), requests=3)))
    [level] = result["servers"][0]["levels"]
    assert level["errors"] == {"connection_error": 3} and level["completed"] == 0


@pytest.fixture(scope="module")
def server(source_gguf):
    # one slot and a queue of two: at most three requests in the server, the rest get 429
    with start_server(source_gguf, "--max-queue", "2", parallel=1, ctx=1024) as s:
        yield s


def _run(config: LoadConfig) -> dict:
    return asyncio.run(run_loadtest(config))["servers"][0]["levels"][0]


@pytest.mark.integration
def test_streams_cancelled_by_the_client_are_counted_as_such(server):
    cancelled_before = server.metric("qwenkit_requests_cancelled_total")
    config = LoadConfig(
        urls=(server.url,), concurrency=(2,), requests=6, max_tokens=12, stream=True, cancel_fraction=0.5
    )
    level = _run(config)
    assert level["errors"] == {}, level
    assert level["completed"] + level["cancelled_by_client"] == 6
    assert level["cancelled_by_client"] == 3  # every second request
    # the server saw exactly those disconnects (it notices them at its next step)
    expected = cancelled_before + level["cancelled_by_client"]
    assert server.wait_metric("qwenkit_requests_cancelled_total", lambda v: v >= expected) == expected
    assert level["ttft_s"]["p50"] > 0 and level["inter_token_latency_s"]["p50"] > 0
    assert 0 < level["e2e_latency_s"]["p50"] <= level["e2e_latency_s"]["p99"]
    assert level["tokens_per_s"] > 0


@pytest.mark.integration
def test_429_from_a_full_queue_is_counted_as_such(server):
    refused_before = server.metric("qwenkit_requests_total", route=CHAT, status="429")
    served_before = server.metric("qwenkit_requests_total", route=CHAT, status="200")
    # a long reply holds the only slot: of six requests at once, two fit in the queue, four are refused
    with ThreadPoolExecutor(1) as pool:
        with slot_held(server):
            future = pool.submit(_run, LoadConfig(urls=(server.url,), concurrency=(6,), requests=6, max_tokens=4))
            server.wait_metric("qwenkit_requests_total", lambda v: v >= refused_before + 4, route=CHAT, status="429")
        level = future.result(timeout=300)  # the queued two run once the long reply is cut
    assert level["errors"] == {"http_429": 4} and level["completed"] == 2
    assert server.metric("qwenkit_requests_total", route=CHAT, status="429") == refused_before + 4
    # the server counts a reply when it ends: the two, and the long one cut by leaving the block
    expected = served_before + 3
    assert server.wait_metric("qwenkit_requests_total", lambda v: v >= expected, route=CHAT, status="200") == expected
    assert level["generated_tokens"] > 0 and level["ttft_s"]["p50"] is None  # not streamed: no first-token time


@pytest.mark.integration
def test_cli_json_and_plot_with_two_labelled_servers(server, tmp_path):
    plot = tmp_path / "load.png"
    cmd = [*CLI, "loadtest", server.url, server.url, "--label", "a", "--label", "b", "-c", "1,2", "-n", "2"]
    cmd += ["--max-tokens", "4", "--stream", "--json", "--plot", str(plot)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert [s["label"] for s in result["servers"]] == ["a", "b"]
    for s in result["servers"]:
        assert [lv["concurrency"] for lv in s["levels"]] == [1, 2]
        assert all(lv["requests_sent"] == 2 for lv in s["levels"])
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
