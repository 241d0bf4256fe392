"""Cluster-wide state in one small Ray actor: the rate limiter, and each replica's metrics for /metrics."""

from __future__ import annotations

import time
from collections import defaultdict

from prometheus_client.parser import text_string_to_metric_families

from qwenkit.serve.security import RateLimiter

STALE_S = 10.0  # a replica that has not reported for this long is counted as gone


class ClusterState:
    """Run as a Ray actor (one per application): every ingress and replica talks to the same one."""

    def __init__(self, requests_per_minute: int | None, tokens_per_minute: int | None) -> None:
        self.limiter = RateLimiter(requests_per_minute, tokens_per_minute)
        self.reports: dict[str, tuple[float, str]] = {}  # replica id -> (when, metrics text)

    def admit(self, bucket: str) -> float | None:
        return self.limiter.admit(bucket)

    def spend(self, bucket: str, tokens: int) -> None:
        self.limiter.spend(bucket, tokens)

    def report(self, replica: str, metrics: str) -> None:
        self.reports[replica] = (time.monotonic(), metrics)

    def metrics(self) -> str:
        """The replicas' metrics summed sample by sample (ratios averaged), plus a replica count."""
        live = self._live()
        sums: dict[tuple[str, tuple[tuple[str, str], ...]], float] = defaultdict(float)
        meta: dict[str, tuple[str, str]] = {}
        order: dict[str, list[tuple[str, tuple[tuple[str, str], ...]]]] = defaultdict(list)
        for text in live.values():
            for family in text_string_to_metric_families(text):
                meta.setdefault(family.name, (family.type, family.documentation))
                for sample in family.samples:
                    key = (sample.name, tuple(sorted(sample.labels.items())))
                    if key not in sums:
                        order[family.name].append(key)
                    sums[key] += sample.value
        lines = [
            "# HELP qwenkit_replicas Replicas reporting to this cluster's state",
            "# TYPE qwenkit_replicas gauge",
            f"qwenkit_replicas {len(live)}",
        ]
        for name, (kind, doc) in meta.items():
            lines += [f"# HELP {name} {doc}", f"# TYPE {name} {kind}"]
            for sample_name, labels in order[name]:
                value = sums[(sample_name, labels)]
                if sample_name.endswith("_ratio") and live:
                    value /= len(live)
                label_text = ",".join(f'{k}="{v}"' for k, v in labels)
                lines.append(f"{sample_name}{{{label_text}}} {value}" if labels else f"{sample_name} {value}")
        return "\n".join(lines) + "\n"

    def _live(self) -> dict[str, str]:
        now = time.monotonic()
        return {r: text for r, (at, text) in self.reports.items() if now - at < STALE_S}
