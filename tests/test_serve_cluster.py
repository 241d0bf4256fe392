"""qwenkit on a Ray Serve cluster: two nodes on 127.0.0.1, two replicas of the tiny Qwen2 model."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator

import pytest

# Read when ray is imported: nodes on 127.0.0.1 only (else Ray resolves 127.0.0.1 to the machine's address).
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
ray = pytest.importorskip("ray", reason="the ray extra is not installed (pip install -e '.[ray]')")

import httpx  # noqa: E402
import openai  # noqa: E402
from ray import serve  # noqa: E402
from ray.cluster_utils import Cluster  # noqa: E402
from serve_helpers import free_port, ray_node  # noqa: E402

from qwenkit.serve.cluster.app import REPLICA_HEADER, build_app  # noqa: E402

KEY = "sk-cluster-test"
RPM = 20  # more than the tests before the last one send, per cluster
WAIT_S = 60.0


@pytest.fixture(scope="module")
def endpoint(tiny_qwen2) -> Iterator[str]:
    cluster = Cluster(initialize_head=True, head_node_args={**ray_node(), "include_dashboard": False})
    try:
        cluster.add_node(**ray_node())
        ray.init(address=cluster.address, _node_ip_address="127.0.0.1", logging_level="warning")
        port = free_port()
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        options = {
            "model": str(tiny_qwen2),
            "replicas": 2,
            "cpus_per_replica": 1,
            "threads": 1,
            "parallel": 2,
            "ctx": 2048,
            "requests_per_minute": RPM,
            "api_keys": [KEY],
            "name": "qwenkit-test",
        }
        serve.run(build_app(options), name="qwenkit-test", route_prefix="/")
        yield f"http://127.0.0.1:{port}"
    finally:
        if ray.is_initialized():
            serve.shutdown()
            ray.shutdown()
        cluster.shutdown()


def _chat(base: str, messages: list[dict[str, str]]) -> tuple[str, str]:
    """(replica id, reply) for one short greedy chat turn."""
    r = httpx.post(
        f"{base}/v1/chat/completions",
        json={"messages": messages, "max_tokens": 4, "temperature": 0},
        headers={"Authorization": f"Bearer {KEY}"},
        timeout=WAIT_S,
    )
    assert r.status_code == 200, r.text
    return r.headers[REPLICA_HEADER], r.json()["choices"][0]["message"]["content"]


def test_conversations_spread_and_follow_ups_stay_with_their_prefix(endpoint: str) -> None:
    first: dict[int, tuple[str, list[dict[str, str]]]] = {}
    for i in range(6):
        messages = [{"role": "system", "content": f"You are assistant number {i}."}, {"role": "user", "content": "hi"}]
        replica, reply = _chat(endpoint, messages)
        first[i] = (replica, [*messages, {"role": "assistant", "content": reply}])
    assert len({replica for replica, _ in first.values()}) == 2  # both replicas took conversations
    for replica, history in first.values():
        follow_up, _ = _chat(endpoint, [*history, {"role": "user", "content": "and then?"}])
        assert follow_up == replica


def test_streaming_keys_and_cluster_metrics(endpoint: str) -> None:
    client = openai.OpenAI(base_url=f"{endpoint}/v1", api_key=KEY, max_retries=0, timeout=WAIT_S)
    stream = client.chat.completions.create(
        model="default", messages=[{"role": "user", "content": "count"}], max_tokens=6, temperature=0, stream=True
    )
    chunks = list(stream)
    assert chunks[-1].choices[0].finish_reason in {"stop", "length"}
    assert httpx.get(f"{endpoint}/v1/models", timeout=WAIT_S).status_code == 401
    health = httpx.get(f"{endpoint}/health", timeout=WAIT_S).json()
    deadline = time.monotonic() + WAIT_S
    text = ""
    while time.monotonic() < deadline:  # replicas report their metrics every second
        text = httpx.get(f"{endpoint}/metrics", timeout=WAIT_S).text
        if "qwenkit_replicas 2" in text and "qwenkit_generation_tokens_total" in text:
            break
        time.sleep(0.5)
    assert "qwenkit_replicas 2" in text
    generated = [line for line in text.splitlines() if line.startswith("qwenkit_generation_tokens_total ")]
    assert generated and float(generated[0].split()[1]) > 0
    assert health == {"status": "ok", "replicas": {"target": 2, "up": 2, "ready": 2}}


def _metric(base: str, name: str) -> float:
    text = httpx.get(f"{base}/metrics", timeout=WAIT_S).text
    values = [float(line.split()[1]) for line in text.splitlines() if line.startswith(name + " ")]
    return values[0] if values else -1.0


def test_a_client_that_leaves_cancels_its_request_on_the_replica(endpoint: str) -> None:
    body = {"messages": [{"role": "user", "content": "Tell me a long story."}], "max_tokens": 1500, "stream": True}
    headers = {"Authorization": f"Bearer {KEY}"}
    with (
        httpx.Client(base_url=endpoint, timeout=WAIT_S) as client,
        client.stream("POST", "/v1/chat/completions", json=body, headers=headers) as response,
    ):
        assert response.status_code == 200
        lines = response.iter_lines()
        events = [line for line, _ in zip(lines, range(200), strict=False) if line.startswith("data:")][:3]
        assert events  # the stream is flowing; leaving the block closes the connection mid-stream
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline and _metric(endpoint, "qwenkit_requests_cancelled_total") < 1:
        time.sleep(0.5)
    assert _metric(endpoint, "qwenkit_requests_cancelled_total") >= 1
    while time.monotonic() < deadline and _metric(endpoint, "qwenkit_requests_running") != 0:
        time.sleep(0.5)
    assert _metric(endpoint, "qwenkit_requests_running") == 0


def test_a_replica_killed_mid_stream_ends_the_stream_with_an_error_event(endpoint: str) -> None:
    body = {"messages": [{"role": "user", "content": "Tell me a long story."}], "max_tokens": 1500, "stream": True}
    headers = {"Authorization": f"Bearer {KEY}"}
    with (
        httpx.Client(base_url=endpoint, timeout=WAIT_S) as client,
        client.stream("POST", "/v1/chat/completions", json=body, headers=headers) as response,
    ):
        replica = response.headers[REPLICA_HEADER]
        lines = response.iter_lines()
        assert any(line.startswith("data:") for line, _ in zip(lines, range(50), strict=False))
        actors = ray.util.list_named_actors(all_namespaces=True)
        [name] = [a["name"] for a in actors if "#model#" in a["name"] and a["name"].endswith(replica)]
        ray.kill(ray.get_actor(name, namespace="serve"))
        rest = [line for line, _ in zip(lines, range(5000), strict=False) if line.startswith("data:")]
    assert rest and "replica_lost" in rest[-1]  # the stream ended, with an error event, not a hang
    replica_after, _ = _chat(endpoint, [{"role": "user", "content": "still there?"}])
    assert replica_after != replica  # the other replica serves while Ray replaces the lost one


def test_the_rate_limit_holds_for_the_whole_cluster(endpoint: str) -> None:
    headers = {"Authorization": f"Bearer {KEY}"}
    statuses = []
    for _ in range(RPM + 1):  # whatever the earlier tests spent, this many more cross the limit
        r = httpx.get(f"{endpoint}/v1/models", headers=headers, timeout=WAIT_S)
        statuses.append(r.status_code)
        if r.status_code == 429:
            assert int(r.headers["retry-after"]) >= 1
            break
    assert statuses[-1] == 429 and set(statuses[:-1]) <= {200}


def _replicas(app: str) -> int:
    return len([a for a in ray.util.list_named_actors(all_namespaces=True) if f"{app}#model#" in a["name"]])


def test_autoscaling_adds_a_replica_under_load_and_removes_it_after(endpoint: str, tiny_qwen2) -> None:
    serve.delete("qwenkit-test")  # free the two CPUs
    options = {
        "model": str(tiny_qwen2),
        "min_replicas": 1,
        "max_replicas": 2,
        "target_ongoing_requests": 1,
    }
    options |= {"upscale_delay_s": 0, "downscale_delay_s": 2, "threads": 1, "parallel": 2, "ctx": 2048}
    options |= {"cpus_per_replica": 1, "name": "qwenkit-auto", "look_back_period_s": 12}
    serve.run(build_app(options), name="qwenkit-auto", route_prefix="/")
    assert _replicas("qwenkit-auto") == 1
    body = {"messages": [{"role": "user", "content": "Tell me a long story."}], "max_tokens": 1500, "stream": True}
    with httpx.Client(base_url=endpoint, timeout=WAIT_S) as client:
        streams = [client.stream("POST", "/v1/chat/completions", json=body) for _ in range(3)]
        opened = [s.__enter__() for s in streams]
        try:
            deadline = time.monotonic() + WAIT_S
            while time.monotonic() < deadline and _replicas("qwenkit-auto") < 2:
                time.sleep(0.5)
            assert _replicas("qwenkit-auto") == 2
        finally:
            for s, response in zip(streams, opened, strict=True):
                s.__exit__(None, None, None)
                assert response.status_code == 200
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline and _replicas("qwenkit-auto") > 1:
        time.sleep(0.5)
    assert _replicas("qwenkit-auto") == 1


@pytest.fixture(scope="module")
def adapter(tiny_loras):
    """A GGUF LoRA (random, so it changes the tiny model's answers)."""
    return tiny_loras["alpha"]


def test_the_cli_serves_on_a_local_ray_with_the_serve_options_and_stops_it(tiny_qwen2, adapter) -> None:
    from serve_helpers import start_server

    options = ["--max-n", "1", "--served-model-name", "coder", "--lora", f"alpha={adapter}"]
    options += ["--max-stored-responses", "0"]
    with start_server(tiny_qwen2, "--ray", "--replicas", "1", *options, env={"RAY_USAGE_STATS_ENABLED": "0"}) as server:
        url = f"http://127.0.0.1:{server.port}/v1"
        models = {m["id"]: m for m in httpx.get(f"{url}/models", timeout=WAIT_S).json()["data"]}
        assert models["alpha"]["parent"] == "coder" and "coder" in models  # --served-model-name, --lora
        prompt = {"messages": [{"role": "user", "content": "Name three colours."}], "max_tokens": 8, "temperature": 0}
        replies = {}
        for model in ("coder", "alpha"):
            r = httpx.post(f"{url}/chat/completions", json={**prompt, "model": model}, timeout=WAIT_S)
            assert r.status_code == 200 and r.headers[REPLICA_HEADER] and r.json()["model"] == model
            replies[model] = r.json()["choices"][0]["message"]["content"]
        assert replies["alpha"] != replies["coder"]  # the adapter is applied on the replica
        r = httpx.post(f"{url}/chat/completions", json={**prompt, "n": 2}, timeout=WAIT_S)
        assert r.status_code == 400 and "--max-n" in r.json()["error"]["message"]
        made = httpx.post(f"{url}/responses", json={"input": "hi", "max_output_tokens": 2}, timeout=WAIT_S)
        assert made.status_code == 200  # but not stored: --max-stored-responses 0
        assert httpx.get(f"{url}/responses/{made.json()['id']}", timeout=WAIT_S).status_code == 404
        server.stop()
        assert server.proc.returncode == 0, server.log()[-2000:]  # Ray shut down in order on SIGTERM
