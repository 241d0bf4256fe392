"""What a qwenkit Ray Serve application is made of: model, replicas, limits (a config file's `args`)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from qwenkit.serve.settings import ServeSettings


class ClusterOptions(BaseModel):
    """The arguments of `build_app` (the `args:` of a Ray Serve config file)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: str = "default"
    engine: str = "auto"
    ctx: int | None = Field(None, ge=256)
    threads: int | None = Field(None, ge=1)
    parallel: int = Field(4, ge=1, le=64)
    max_queue: int = Field(64, ge=0)
    dtype: str = "auto"
    quantization: str | None = None
    effort_budgets: str = ""
    # replicas: a fixed count, or autoscaling between min and max
    replicas: int | None = Field(None, ge=1)
    min_replicas: int | None = Field(None, ge=0)
    max_replicas: int | None = Field(None, ge=1)
    target_ongoing_requests: float = Field(2.0, gt=0)
    upscale_delay_s: float = Field(30.0, ge=0)
    downscale_delay_s: float = Field(600.0, ge=0)
    # load is averaged over this window; Ray Serve pushes load metrics every 10 s (its default
    # `metrics_interval_s`, deprecated to set), and wants the window longer than that
    look_back_period_s: float = Field(30.0, gt=10)
    cpus_per_replica: float = Field(1.0, gt=0)
    replica_resources: dict[str, float] = {}  # custom Ray resources each replica needs (e.g. one per node)
    ingress_resources: dict[str, float] = {}  # ... the ingress and the state actor need (e.g. the head node's)
    router: Literal["prefix", "default"] = "prefix"
    max_imbalance: int = Field(4, ge=0)
    # faults: a request whose replica is lost before it answered is sent to another one
    max_retries: int = Field(2, ge=0, le=10)
    replica_wait_s: float = Field(30.0, gt=0)  # for a replica to take a request (else 503)
    # the HTTP side, as in `qwenkit serve`
    api_keys: frozenset[str] = frozenset()
    requests_per_minute: int | None = Field(None, ge=1)
    tokens_per_minute: int | None = Field(None, ge=1)
    max_body_bytes: int = Field(1_000_000, ge=1024)
    max_tokens_cap: int = Field(8192, ge=1)
    log_prompts: bool = False
    max_n: int = Field(4, ge=1, le=128)
    max_stored_responses: int = Field(256, ge=0)
    served_model_name: str | None = None
    lora: dict[str, str] = {}  # name -> adapter file, loaded on every replica (same path on every node)
    # images (Qwen2.5-VL), as in `qwenkit serve`: paths must be the same on every node
    mmproj: str | None = None  # the vision projector GGUF beside a llama.cpp model
    image_max_tokens: int | None = Field(None, ge=4)
    allow_remote_media: bool = False
    media_dir: str | None = None
    max_images: int = Field(8, ge=0)
    media_hosts: frozenset[str] = frozenset()
    name: str = "qwenkit"

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

    def settings(self, aliases: tuple[str, ...] = ()) -> ServeSettings:
        """The single-server settings each replica's app runs with (limits are enforced per cluster);
        `aliases`: more names the model answers to."""
        return ServeSettings(
            api_keys=self.api_keys,
            max_body_bytes=self.max_body_bytes,
            max_tokens_cap=self.max_tokens_cap,
            log_prompts=self.log_prompts,
            max_n=min(self.max_n, self.parallel),  # a request's choices run side by side
            max_stored_responses=self.max_stored_responses,
            served_name=self.served_model_name,
            model_aliases=aliases,
            lora=tuple(self.lora.items()),
            allow_remote_media=self.allow_remote_media,
            media_dir=Path(self.media_dir) if self.media_dir else None,
            max_images=self.max_images,
            media_hosts=self.media_hosts,
        )
