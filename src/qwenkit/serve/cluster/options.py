"""What a qwenkit Ray Serve application is made of: what `qwenkit serve` serves, on replicas (a
config file's `args`)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from qwenkit.options import option
from qwenkit.serve.options import ServeOptions

# Options of `qwenkit serve` that a cluster does not take, and why.
NOT_ON_RAY = {
    "host": "--host and --port are Ray Serve's to set (http_options in a config file)",
    "port": "--host and --port are Ray Serve's to set (http_options in a config file)",
    "allow_runtime_lora": "--allow-runtime-lora is not supported with --ray: a runtime load would reach one "
    "replica only; give the adapters with --lora (loaded on every replica)",
    "prefix_cache_tokens": "--prefix-cache-tokens is not supported with --ray yet: replicas keep the default",
    "cors_origins": "--cors-origin is not supported with --ray yet: set CORS on the proxy in front",
}
VLLM = ("tensor_parallel", "pipeline_parallel", "data_parallel", "distributed_executor_backend")


class ClusterOptions(ServeOptions):
    """The arguments of `build_app` (the `args:` of a Ray Serve config file): `ServeOptions`
    (paths must be the same on every node) and the replicas."""

    # replicas: a fixed count, or autoscaling between min and max
    replicas: int | None = option(None, "--replicas", ge=1, help="(--ray) A fixed number of replicas.")
    min_replicas: int | None = option(None, "--min-replicas", ge=0, help="(--ray) Autoscale from this many.")
    max_replicas: int | None = option(None, "--max-replicas", ge=1, help="(--ray) Autoscale up to this many.")
    target_ongoing_requests: float = option(
        2.0, "--target-ongoing-requests", ge=0.1, help="(--ray) Autoscaling target."
    )
    upscale_delay_s: float = option(30.0, "--upscale-delay", ge=0, help="(--ray) Seconds of load before adding.")
    downscale_delay_s: float = option(600.0, "--downscale-delay", ge=0, help="(--ray) Idle seconds before removing.")
    # load is averaged over this window; Ray Serve pushes load metrics every 10 s (its default
    # `metrics_interval_s`, deprecated to set), and wants the window longer than that
    look_back_period_s: float = Field(30.0, gt=10)
    cpus_per_replica: float = option(1.0, "--cpus-per-replica", ge=0.01, help="(--ray) CPUs declared per replica.")
    replica_resources: dict[str, float] = Field(
        default_factory=dict
    )  # custom Ray resources each replica needs (e.g. one per node)
    ingress_resources: dict[str, float] = Field(
        default_factory=dict
    )  # ... the ingress and the state actor need (e.g. the head node's)
    router: Literal["prefix", "default"] = option(
        "prefix", "--router", help="(--ray) prefix (cache-aware) or default (Ray's)."
    )
    max_imbalance: int = option(
        4, "--max-imbalance", ge=0, help="(--ray) Requests a prefix holder may be busier than the idlest replica."
    )
    # faults: a request whose replica is lost before it answered is sent to another one
    max_retries: int = Field(2, ge=0, le=10)
    replica_wait_s: float = Field(30.0, gt=0)  # for a replica to take a request (else 503)
    name: str = "qwenkit"

    @model_validator(mode="after")
    def _what_a_cluster_serves(self) -> ClusterOptions:
        if self.engine == "vllm" or any(getattr(self, f) != ClusterOptions.model_fields[f].default for f in VLLM):
            raise ValueError("--ray serves llama.cpp or transformers replicas; vLLM distributes itself (--engine vllm)")
        for name, reason in NOT_ON_RAY.items():
            if getattr(self, name) != ClusterOptions.model_fields[name].default:
                raise ValueError(reason)
        return self

    @model_validator(mode="after")
    def _one_way_to_scale(self) -> ClusterOptions:
        autoscaled = self.min_replicas is not None or self.max_replicas is not None
        if autoscaled and self.replicas is not None:
            raise ValueError("give either replicas or min_replicas/max_replicas, not both")
        if autoscaled and (self.min_replicas or 0) > (self.max_replicas or 1):
            raise ValueError("min_replicas is larger than max_replicas")
        return self

    def autoscaling(self) -> dict[str, float] | None:
        if self.min_replicas is None and self.max_replicas is None:
            return None
        return {
            "min_replicas": self.min_replicas or 0,
            "max_replicas": self.max_replicas or max(1, self.min_replicas or 1),
            "initial_replicas": max(1, self.min_replicas or 1),
            "target_ongoing_requests": self.target_ongoing_requests,
            "upscale_delay_s": self.upscale_delay_s,
            "downscale_delay_s": self.downscale_delay_s,
            "look_back_period_s": self.look_back_period_s,
        }
