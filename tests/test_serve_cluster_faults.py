"""A `serve --ray` cluster of three nodes on 127.0.0.1 (the head with the ingress, two workers with
one replica each): Responses API follow-ups find the replica that stored their response, and a whole
worker node killed under bounded concurrent load."""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Any

import pytest

# Read when ray is imported: nodes on 127.0.0.1 only (else Ray resolves 127.0.0.1 to the machine's address).
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
ray = pytest.importorskip("ray", reason="the ray extra is not installed (pip install -e '.[ray]')")

import httpx  # noqa: E402
from ray import serve  # noqa: E402
from ray.cluster_utils import Cluster  # noqa: E402
from serve_helpers import free_port, ray_node  # noqa: E402

from qwenkit.serve.cluster.app import ATTEMPTS_HEADER, REPLICA_HEADER, build_app  # noqa: E402

APP = "qwenkit-faults"
SLOT = "qwenkit_replica"  # a custom resource: one per worker node, one per replica
HEAD = "qwenkit_head"
WAIT_S = 90.0  # every client call, and every wait for the cluster, is bounded by this


@dataclass
class ClusterUnderTest:
    cluster: Cluster
    workers: list[Any]
    url: str


def _health(url: str) -> tuple[int, dict[str, Any]]:
    r = httpx.get(f"{url}/health", timeout=WAIT_S)
    return r.status_code, r.json()


def _wait_health(url: str, want: dict[str, int]) -> dict[str, Any]:
    deadline = time.monotonic() + WAIT_S
    body: dict[str, Any] = {}
    while time.monotonic() < deadline:
        _, body = _health(url)
        if all(body["replicas"].get(k) == v for k, v in want.items()):
            return body
        time.sleep(0.5)
    raise AssertionError(f"/health never reported {want}: {body}")


@pytest.fixture(scope="module")
def three_nodes(tiny_qwen2) -> Iterator[ClusterUnderTest]:
    head = {**ray_node(**{HEAD: 1}), "include_dashboard": False}
    cluster = Cluster(initialize_head=True, head_node_args=head)
    try:
        workers = [cluster.add_node(**ray_node(**{SLOT: 1})) for _ in range(2)]
        ray.init(address=cluster.address, _node_ip_address="127.0.0.1", logging_level="warning")
        port = free_port()
        serve.start(proxy_location="HeadOnly", http_options={"host": "127.0.0.1", "port": port})
        options = {
            "model": str(tiny_qwen2),
            "replicas": 2,
            "cpus_per_replica": 1,
            "replica_resources": {SLOT: 1},
            "ingress_resources": {HEAD: 0.01},
            "threads": 1,
            "parallel": 2,
            "ctx": 4096,
            "name": APP,
        }
        serve.run(build_app(options), name=APP, route_prefix="/")
        yield ClusterUnderTest(cluster, workers, f"http://127.0.0.1:{port}")
    finally:
        if ray.is_initialized():
            serve.shutdown()
            ray.shutdown()
        cluster.shutdown()


def _replica_nodes() -> dict[str, str]:
    """Replica id -> id of the node it runs on."""
    from ray.serve.context import _get_global_client

    model = _get_global_client().get_serve_details()["applications"][APP]["deployments"]["model"]
    return {r["replica_id"]: r["node_id"] for r in model["replicas"] if r["state"] == "RUNNING"}


@dataclass
class Outcome:
    status: int
    replica: str = ""
    attempts: int = 0
    events: list[str] = field(default_factory=list)
    error: str = ""
    left: bool = False  # the client left a stream that was still flowing


LONG = {"role": "user", "content": "Tell me a long story."}


def _post(url: str, messages: list[dict[str, str]], max_tokens: int) -> Outcome:
    body = {"messages": messages, "max_tokens": max_tokens, "temperature": 0}
    try:
        r = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=WAIT_S)
    except httpx.HTTPError as exc:
        return Outcome(0, error=repr(exc))
    return Outcome(r.status_code, r.headers.get(REPLICA_HEADER, ""), int(r.headers.get(ATTEMPTS_HEADER, 0)))


def _stream(
    url: str, messages: list[dict[str, str]], max_tokens: int, flowing: list[str], leave: threading.Event | None = None
) -> Outcome:
    """A streamed turn's events; once `leave` is set, the client leaves after 20 more events."""
    body = {"messages": messages, "max_tokens": max_tokens, "temperature": 0, "stream": True}
    try:
        with (
            httpx.Client(base_url=url, timeout=WAIT_S) as client,
            client.stream("POST", "/v1/chat/completions", json=body) as r,
        ):
            out = Outcome(r.status_code, r.headers.get(REPLICA_HEADER, ""), int(r.headers.get(ATTEMPTS_HEADER, 0)))
            after = 0
            for line, _ in zip(r.iter_lines(), range(20_000), strict=False):
                if line.startswith("data:"):
                    out.events.append(line)
                    if len(out.events) == 1:
                        flowing.append(out.replica)
                    after += leave is not None and leave.is_set()
                    if after == 20:
                        out.left = True
                        break
            return out
    except httpx.HTTPError as exc:
        return Outcome(0, error=repr(exc))


def _conversations(url: str, replicas: list[str]) -> dict[str, list[list[dict[str, str]]]]:
    """Four conversations begun on each replica (a follow-up goes to the replica holding its prefix)."""
    held: dict[str, list[list[dict[str, str]]]] = {r: [] for r in replicas}
    for i in range(16):
        messages = [{"role": "system", "content": f"You are assistant number {i}."}, {"role": "user", "content": "hi"}]
        first = _post(url, messages, 2)
        assert first.status == 200, first
        if len(held[first.replica]) < 4:
            held[first.replica].append([*messages, {"role": "assistant", "content": "hello"}, LONG])
        if all(len(c) == 4 for c in held.values()):
            return held
    raise AssertionError(f"conversations did not spread over both replicas: {held}")


def _waiting(url: str) -> float:
    text = httpx.get(f"{url}/metrics", timeout=WAIT_S).text
    return sum(float(line.split()[1]) for line in text.splitlines() if line.startswith("qwenkit_requests_waiting "))


def _until(condition: Callable[[], bool]) -> bool:
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline and not condition():
        time.sleep(0.1)
    return condition()


def _open_stream(stack: ExitStack, client: httpx.Client, content: str) -> tuple[ExitStack, str]:
    """A long chat stream, open and flowing until its own stack closes: (that stack, its replica)."""
    body = {"messages": [{"role": "user", "content": content}], "max_tokens": 4000, "stream": True}
    own = stack.enter_context(ExitStack())
    r = own.enter_context(client.stream("POST", "/v1/chat/completions", json=body))
    assert r.status_code == 200 and any(line for line, _ in zip(r.iter_lines(), range(10), strict=False))
    return own, r.headers[REPLICA_HEADER]


def test_a_responses_follow_up_goes_to_the_replica_that_stored_its_response(three_nodes: ClusterUnderTest) -> None:
    with httpx.Client(base_url=three_nodes.url, timeout=WAIT_S) as client, ExitStack() as streams:
        busy, first = _open_stream(streams, client, "Tell me a long story.")
        made = client.post("/v1/responses", json={"input": "hi", "max_output_tokens": 4})
        assert made.status_code == 200
        stored_on, rid = made.headers[REPLICA_HEADER], made.json()["id"]
        assert stored_on != first  # the idle replica made it
        _, second = _open_stream(streams, client, "Tell me another long story.")  # now the storing replica is busy
        assert second == stored_on
        busy.close()  # and the other one idle: load alone would send a follow-up there
        time.sleep(1.0)
        for _ in range(3):
            body = {"input": "and then?", "max_output_tokens": 4, "previous_response_id": rid}
            follow = client.post("/v1/responses", json=body)
            assert (follow.status_code, follow.headers[REPLICA_HEADER]) == (200, stored_on), follow.text
        fetched = client.get(f"/v1/responses/{rid}")
        assert fetched.status_code == 200 and fetched.json()["id"] == rid


def test_a_node_killed_under_load_loses_no_request_that_had_not_started(three_nodes: ClusterUnderTest) -> None:
    url = three_nodes.url
    assert _health(url) == (200, {"status": "ok", "replicas": {"target": 2, "up": 2, "ready": 2}})
    placement = _replica_nodes()
    assert len(set(placement.values())) == 2  # one replica on each worker node
    (victim_replica, victim_node_id), (survivor, _) = placement.items()
    [victim] = [n for n in three_nodes.workers if n.node_id == victim_node_id]
    held = _conversations(url, list(placement))

    started = time.monotonic()
    flowing: list[str] = []
    with ThreadPoolExecutor(max_workers=12) as pool:
        # on each replica: two streams in its two slots, then a stream and two whole requests waiting behind them
        # (long enough to outlast the setup on a fast machine; the survivor's are left once they outlived the kill)
        killed = threading.Event()
        long_streams = {r: (4000, flowing, killed if r == survivor else None) for r in placement}
        streams = {r: [pool.submit(_stream, url, c, *long_streams[r]) for c in held[r][:2]] for r in placement}
        assert _until(lambda: len(flowing) == 4)
        queued = {r: pool.submit(_stream, url, held[r][2], 200, flowing) for r in placement}
        wholes = {r: [pool.submit(_post, url, c, 200) for c in (held[r][3], held[r][0])] for r in placement}
        assert _until(lambda: _waiting(url) == 6)  # all in the replicas' queues (reported each second)
        three_nodes.cluster.remove_node(victim, allow_graceful=False)
        killed.set()
        whole = {r: [f.result(timeout=2 * WAIT_S) for f in fs] for r, fs in wholes.items()}
        waited = {r: f.result(timeout=2 * WAIT_S) for r, f in queued.items()}
        streamed = {r: [f.result(timeout=2 * WAIT_S) for f in fs] for r, fs in streams.items()}
    assert time.monotonic() - started < 3 * WAIT_S  # no client hung

    # requests waiting on the lost replica were answered by the survivor, on their second attempt
    assert [(o.status, o.replica, o.attempts) for o in whole[victim_replica]] == [(200, survivor, 2)] * 2, whole
    assert [(o.status, o.replica, o.attempts) for o in whole[survivor]] == [(200, survivor, 1)] * 2, whole
    assert (waited[victim_replica].replica, waited[victim_replica].attempts) == (survivor, 2), waited
    assert all(o.status == 200 and o.events[-1] == "data: [DONE]" for o in waited.values()), waited
    # streams cut mid-way end with an error event; the survivor's flow on
    for o in streamed[victim_replica]:
        assert o.status == 200 and o.replica == victim_replica
        assert json.loads(o.events[-1].removeprefix("data:"))["error"]["code"] == "replica_lost", o.events[-3:]
    for o in streamed[survivor]:
        assert o.status == 200 and o.replica == survivor and (o.left or o.events[-1] == "data: [DONE]"), o
        assert not any("replica_lost" in event for event in o.events)

    body = _wait_health(url, {"target": 2, "ready": 1})
    assert body["status"] == "degraded" and _health(url)[0] == 200
    from typer.testing import CliRunner

    from qwenkit.cli import app

    lenient = ["--max-ttft", "60", "--unhealthy-ttft", "120", "--min-memory", "0"]  # the machine is shared
    result = CliRunner().invoke(app, ["health", "--url", url, "--probe-tokens", "4", *lenient, "--json"])
    report = json.loads(result.stdout)
    assert result.exit_code == 1 and report["status"] == "degraded", result.stdout
    [replicas] = [f for f in report["findings"] if f["check"] == "replicas"]
    assert replicas["status"] == "degraded" and replicas["message"] == "1 of 2 replica(s) ready"
    assert _post(url, [LONG], 4).status == 200  # the server goes on answering

    # a node with the capacity comes back: Ray starts the lost replica there
    three_nodes.workers.append(three_nodes.cluster.add_node(**ray_node(**{SLOT: 1})))
    body = _wait_health(url, {"target": 2, "ready": 2})
    assert body["status"] == "ok"
