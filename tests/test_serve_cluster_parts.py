"""The Ray-free parts of `serve --ray`: routing keys, summed metrics, option checks."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from qwenkit.serve.cluster.options import ClusterOptions
from qwenkit.serve.cluster.prefix import prefix_keys
from qwenkit.serve.cluster.responses import ResponseOwners, made_response, named_response
from qwenkit.serve.cluster.state import ClusterState


def _chat(messages: list[dict[str, str]]) -> bytes:
    return json.dumps({"model": "m", "messages": messages}).encode()


def test_a_follow_up_turn_extends_the_keys_of_the_turn_before() -> None:
    turn = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]
    follow = [*turn, {"role": "assistant", "content": "hello"}, {"role": "user", "content": "more"}]
    first, second = prefix_keys("/v1/chat/completions", _chat(turn)), prefix_keys("/v1/chat/completions", _chat(follow))
    assert len(first) == 2 and second[:2] == first and len(second) == 4
    other = prefix_keys("/v1/chat/completions", _chat([{"role": "system", "content": "be long"}]))
    assert other[0] != first[0]


def test_completion_prompts_share_keys_block_by_block() -> None:
    base = "x" * 600
    a = prefix_keys("/v1/completions", json.dumps({"prompt": base + "a"}).encode())
    b = prefix_keys("/v1/completions", json.dumps({"prompt": base + "b"}).encode())
    assert len(a) == 3 and a[:2] == b[:2] and a[2] != b[2]
    assert prefix_keys("/v1/completions", b"not json") == []


def test_metrics_are_summed_over_live_replicas() -> None:
    state = ClusterState(None, None)
    text = (
        "# HELP qwenkit_generation_tokens_total Tokens generated\n# TYPE qwenkit_generation_tokens_total counter\n"
        "qwenkit_generation_tokens_total {n}\n"
        "# HELP qwenkit_kv_cache_usage_ratio Share\n# TYPE qwenkit_kv_cache_usage_ratio gauge\n"
        "qwenkit_kv_cache_usage_ratio {r}\n"
    )
    state.report("a", text.format(n=3, r=0.2))
    state.report("b", text.format(n=4, r=0.4))
    merged = state.metrics()
    assert "qwenkit_replicas 2" in merged
    assert "qwenkit_generation_tokens_total 7.0" in merged
    assert "qwenkit_kv_cache_usage_ratio 0.30000000000000004" in merged or "qwenkit_kv_cache_usage_ratio 0.3" in merged


def test_the_cluster_rate_limit_is_shared() -> None:
    state = ClusterState(requests_per_minute=2, tokens_per_minute=None)
    assert state.admit("k") is None and state.admit("k") is None
    assert state.admit("k") is not None  # a third request within the minute, from any ingress


def test_replicas_or_autoscaling_not_both() -> None:
    with pytest.raises(ValidationError):
        ClusterOptions(replicas=2, max_replicas=3)
    auto = ClusterOptions(min_replicas=1, max_replicas=2, upscale_delay_s=1).autoscaling()
    assert auto is not None and auto["max_replicas"] == 2 and auto["upscale_delay_s"] == 1


def test_autoscaling_uses_only_ray_serves_current_fields() -> None:
    serve_config = pytest.importorskip("ray.serve.config", reason="the ray extra is not installed")
    auto = ClusterOptions(min_replicas=1, max_replicas=2).autoscaling()
    assert auto is not None and "metrics_interval_s" not in auto  # deprecated in Ray Serve
    # pyproject's filterwarnings make Ray's deprecation and window warnings errors here
    assert serve_config.AutoscalingConfig(**auto).look_back_period_s == 30
    with pytest.raises(ValidationError):
        ClusterOptions(min_replicas=1, max_replicas=2, look_back_period_s=5)  # not longer than Ray's 10 s push


def test_the_cli_refuses_conflicting_ray_options_in_one_line() -> None:
    from typer.testing import CliRunner

    from qwenkit.cli import app
    from qwenkit.errors import QwenkitError

    result = CliRunner().invoke(app, ["serve", "--ray", "--replicas", "2", "--max-replicas", "3"])
    assert isinstance(result.exception, QwenkitError)  # `qwenkit` prints it as one line
    assert "give either replicas or min_replicas/max_replicas, not both" in str(result.exception)


def test_replicas_run_the_single_server_settings_they_are_given() -> None:
    options = ClusterOptions(
        parallel=2, max_n=8, served_model_name="coder", lora={"alpha": "/a.gguf"}, max_stored_responses=7
    )
    settings = options.settings(("qwen.gguf",))
    assert settings.max_n == 2  # a request's choices run side by side, so at most --parallel
    assert settings.served_name == "coder" and settings.model_aliases == ("qwen.gguf",)
    assert settings.lora == (("alpha", "/a.gguf"),) and settings.max_stored_responses == 7


def test_replicas_take_images_under_the_media_policy_they_are_given(tmp_path) -> None:
    options = ClusterOptions(
        mmproj="/m/mmproj.gguf", image_max_tokens=64, allow_remote_media=True, media_dir=str(tmp_path), max_images=2
    )
    policy = options.settings().media()
    assert policy.allow_remote and policy.media_dir == tmp_path and policy.max_images == 2
    assert ClusterOptions().settings().media().allow_remote is False  # off unless asked, as in `qwenkit serve`


@pytest.mark.parametrize(
    ("option", "reason"),
    [
        (["--allow-runtime-lora", "--api-key", "k"], "a runtime load would reach one replica only"),
        (["--cors-origin", "http://a.example"], "--cors-origin is not supported with --ray"),
    ],
)
def test_the_cli_says_why_an_option_does_not_work_with_ray(option: list[str], reason: str) -> None:
    from typer.testing import CliRunner

    from qwenkit.cli import app
    from qwenkit.errors import QwenkitError

    result = CliRunner().invoke(app, ["serve", "--ray", *option])
    assert isinstance(result.exception, QwenkitError) and reason in str(result.exception)


def test_requests_naming_a_stored_response_find_the_replica_that_made_it() -> None:
    owners = ResponseOwners(capacity=2)
    owners.learn(made_response(b'{"id": "resp_1", "object": "response"}', sse=False) or "", "replica-a")
    event = b'event: response.created\ndata: {"type": "response.created", "response": {"id": "resp_2"}}\n\n'
    owners.learn(made_response(event, sse=True) or "", "replica-b")
    assert owners.owner(named_response("POST", "/v1/responses", b'{"previous_response_id": "resp_1"}')) == "replica-a"
    assert owners.owner(named_response("GET", "/v1/responses/resp_2", b"")) == "replica-b"
    assert named_response("POST", "/v1/responses", b"not json") is None
    assert named_response("POST", "/v1/chat/completions", b'{"previous_response_id": "resp_1"}') is None
    owners.learn("resp_3", "replica-a")  # the oldest is forgotten beyond the capacity
    assert owners.owner("resp_1") is None and owners.owner("resp_3") == "replica-a"


class _Counts:
    """What /health reads: the replica counts, or the controller's failure."""

    def __init__(self, counts: dict[str, int] | Exception) -> None:
        self.counts = counts

    async def _replica_counts(self) -> dict[str, int]:
        if isinstance(self.counts, Exception):
            raise self.counts
        return self.counts


@pytest.mark.parametrize(
    ("counts", "code", "status"),
    [
        ({"target": 2, "up": 2, "ready": 2}, 200, "ok"),
        ({"target": 2, "up": 2, "ready": 1}, 200, "degraded"),
        ({"target": 2, "up": 1, "ready": 0}, 503, "loading"),
        (RuntimeError("controller gone"), 503, "unavailable"),
    ],
)
def test_health_is_503_while_no_replica_is_ready_or_the_controller_cannot_say(
    counts: dict[str, int] | Exception, code: int, status: str
) -> None:
    import asyncio

    from qwenkit.serve.cluster.app import Ingress

    response = asyncio.run(Ingress.health(_Counts(counts)))  # type: ignore[arg-type]
    body = json.loads(response.body)
    assert (response.status_code, body["status"]) == (code, status)
    if isinstance(counts, Exception):
        assert "controller did not answer (RuntimeError)" in body["reason"]
