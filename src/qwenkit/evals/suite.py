"""What every suite is: problems, a prompt per problem, a scorer, and how scores add up."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from math import comb
from typing import Any


@dataclass(frozen=True)
class Problem:
    """One question of a suite: the user message to send and what the scorer needs."""

    id: str
    prompt: str
    reference: dict[str, Any]
    group: str = "all"  # e.g. a language: scores are also reported per group


@dataclass(frozen=True)
class Score:
    """One sample's verdict, with what was extracted and why (kept in the per-problem record)."""

    passed: bool
    detail: dict[str, Any] = field(default_factory=dict)


class Suite(ABC):
    """A benchmark: `problems()` in a fixed order, `score` one generated answer."""

    name: str
    prompt_format: str  # how a problem becomes a message, recorded with every result
    max_tokens: int  # a sensible default answer length without thinking
    source: str  # where the data comes from

    @abstractmethod
    def problems(self) -> list[Problem]: ...

    @abstractmethod
    def score(self, problem: Problem, answer: str) -> Score: ...

    def environment(self) -> dict[str, Any]:
        """What else the scores depend on (e.g. how code is executed), recorded with the results."""
        return {}

    def select(self, limit: int | None) -> list[Problem]:
        """The first `limit` problems (all when None)."""
        problems = self.problems()
        return problems if limit is None else problems[:limit]


def pass_at_k(n: int, c: int, k: int) -> float:
    """The unbiased pass@k estimator (Chen et al., 2021): 1 - C(n-c, k) / C(n, k)."""
    if n - c < k:
        return 1.0
    return 1.0 - comb(n - c, k) / comb(n, k)


def aggregate(records: Sequence[dict[str, Any]], samples: int) -> dict[str, Any]:
    """Percentages over finished problems: pass@1 (and pass@k for k = `samples` > 1), overall and per group."""
    ks = sorted({1, samples})

    def metrics(rows: Sequence[dict[str, Any]]) -> dict[str, float]:
        return {
            f"pass@{k}": round(100 * sum(pass_at_k(r["n"], r["correct"], k) for r in rows) / len(rows), 2)
            for k in ks
            if rows and all(r["n"] >= k for r in rows)
        }

    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for record in records:
        groups[record["group"]].append(record)
    result: dict[str, Any] = {"problems": len(records), **metrics(records)}
    if len(groups) > 1:
        result["groups"] = {name: {"problems": len(rows), **metrics(rows)} for name, rows in sorted(groups.items())}
    return result
