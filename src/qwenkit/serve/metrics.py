"""Prometheus metrics of one server (its own registry, so several apps can live in a process)."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from qwenkit.engines.base import EngineStats

_LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
_TOKEN_GAP_BUCKETS = (0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.15, 0.25, 0.5, 1, 2.5)


class _SchedulerCollector(Collector):
    def __init__(self, stats: Callable[[], EngineStats | None]) -> None:
        self._stats = stats

    def collect(self) -> Iterator:
        s = self._stats()
        if s is None:
            return
        yield GaugeMetricFamily("qwenkit_requests_running", "Requests holding a decode slot", value=s.running)
        yield GaugeMetricFamily("qwenkit_requests_waiting", "Requests queued for a slot", value=s.waiting)
        yield GaugeMetricFamily(
            "qwenkit_kv_cache_usage_ratio",
            "Share of KV-cache cells in use",
            value=s.kv_used_cells / max(s.kv_total_cells, 1),
        )
        yield CounterMetricFamily(
            "qwenkit_prefix_cache_hit_tokens", "Prompt tokens served from the prefix cache", value=s.prefix_hit_tokens
        )
        yield CounterMetricFamily(
            "qwenkit_prompt_tokens_scheduled", "Prompt tokens submitted to the engine", value=s.prompt_tokens
        )
        yield CounterMetricFamily(
            "qwenkit_spec_drafted_tokens", "Tokens drafted by speculative decoding and verified", value=s.drafted_tokens
        )
        yield CounterMetricFamily(
            "qwenkit_spec_accepted_tokens", "Drafted tokens the output kept", value=s.accepted_draft_tokens
        )


class Metrics:
    def __init__(self, stats: Callable[[], EngineStats | None]) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "qwenkit_requests", "HTTP requests by route and status", ["route", "status"], registry=r
        )
        self.prompt_tokens = Counter("qwenkit_prompt_tokens", "Prompt tokens processed", registry=r)
        self.generation_tokens = Counter("qwenkit_generation_tokens", "Tokens generated", registry=r)
        self.cancelled = Counter("qwenkit_requests_cancelled", "Requests ended by a client disconnect", registry=r)
        self.ttft = Histogram(
            "qwenkit_time_to_first_token_seconds", "Time to first token", buckets=_LATENCY_BUCKETS, registry=r
        )
        self.itl = Histogram(
            "qwenkit_inter_token_latency_seconds",
            "Time between streamed tokens",
            buckets=_TOKEN_GAP_BUCKETS,
            registry=r,
        )
        self.e2e = Histogram(
            "qwenkit_e2e_request_latency_seconds", "Request latency, end to end", buckets=_LATENCY_BUCKETS, registry=r
        )
        r.register(_SchedulerCollector(stats))

    def count_request(self, scope: dict, status: int) -> None:
        """Count a finished HTTP request under its route template (never the raw path)."""
        route = getattr(scope.get("route"), "path", "unmatched")
        self.requests.labels(route, str(status or 499)).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)
