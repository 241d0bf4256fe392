"""Summaries of repeated measurements: a median with its spread, and latency percentiles."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Spread:
    """The median of repeated measurements, with the smallest and largest of them."""

    median: float
    min: float
    max: float
    samples: tuple[float, ...]

    @classmethod
    def of(cls, values: Sequence[float]) -> Spread:
        if not values:
            raise ValueError("no measurements to summarize")
        return cls(statistics.median(values), min(values), max(values), tuple(values))

    def to_dict(self, digits: int = 4) -> dict[str, object]:
        return {
            "median": round(self.median, digits),
            "min": round(self.min, digits),
            "max": round(self.max, digits),
            "samples": [round(v, digits) for v in self.samples],
        }


def percentiles(values: Sequence[float], points: Sequence[int] = (50, 95, 99)) -> dict[str, float | None]:
    """{"p50": ..., "p95": ..., "p99": ...} (linear interpolation); None for each when there are no values."""
    if not values:
        return {f"p{p}": None for p in points}
    found = np.percentile(np.asarray(values, dtype=float), list(points))
    return {f"p{p}": round(float(v), 4) for p, v in zip(points, found, strict=True)}
