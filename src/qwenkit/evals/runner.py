"""Run a suite against a backend: generate concurrently, score in the sandbox, record, summarize."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib.metadata import version
from typing import Any

from qwenkit.chat.sampling import sampling_defaults
from qwenkit.evals.backends import Backend, Request
from qwenkit.evals.published import reference
from qwenkit.evals.records import RunRecords
from qwenkit.evals.suite import Problem, Suite, aggregate

GREEDY = {"temperature": 0.0, "repetition_penalty": 1.0}
SCORING_WORKERS = 2  # sandboxed test programs at once

Progress = Callable[[int, int, float], None]  # (finished problems, all problems, running pass@1 in %)


@dataclass(frozen=True)
class RunOptions:
    limit: int | None = None
    samples: int = 1
    concurrency: int = 4
    think: bool | None = None
    thinking_budget: int | None = None
    max_tokens: int | None = None
    seed: int = 0


def thinks(think: bool | None, model_key: str) -> bool:
    """Whether answers come with thinking: as asked, else the model's default (Qwen3 hybrids think)."""
    return think if think is not None else "qwen3" in model_key and "instruct-2507" not in model_key


def sampling_for(options: RunOptions, model_key: str) -> dict[str, Any]:
    """Greedy for pass@1 without thinking; Qwen's recommended sampling for pass@k and for thinking."""
    thinking = thinks(options.think, model_key)
    if options.samples == 1 and not thinking:
        return dict(GREEDY)
    architecture = "qwen3" if "qwen3" in model_key else "qwen2"
    return sampling_defaults(thinking=thinking, architecture=architecture)


def settings_for(suite: Suite, backend: Backend, options: RunOptions) -> dict[str, Any]:
    """Everything a result depends on, recorded with it."""
    described = backend.describe()
    key = described["model_key"]
    thinking = thinks(options.think, key)
    max_tokens = options.max_tokens or (
        suite.max_tokens + (options.thinking_budget or 4096) if thinking else suite.max_tokens
    )
    return {
        "suite": suite.name,
        "data": suite.source,
        "prompt_format": suite.prompt_format,
        **suite.environment(),
        **described,
        "think": thinking,
        "think_requested": options.think,
        "thinking_budget": options.thinking_budget,
        "samples": options.samples,
        "sampling": sampling_for(options, key),
        "seed": options.seed,
        "max_tokens": max_tokens,
        "limit": options.limit,
        "concurrency": options.concurrency,
        "qwenkit": version("qwenkit"),
    }


async def evaluate(
    suite: Suite,
    backend: Backend,
    options: RunOptions,
    records: RunRecords | None = None,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Run (or finish) the suite and return the summary; with `records`, finished problems are skipped."""
    settings = settings_for(suite, backend, options)
    problems = suite.select(options.limit)
    settings["problems_total"] = len(suite.problems())
    done = records.resume(settings) if records else {}
    results = [done[p.id] for p in problems if p.id in done]
    pending = [p for p in problems if p.id not in done]
    generating = asyncio.Semaphore(options.concurrency)
    scoring = asyncio.Semaphore(SCORING_WORKERS)
    started = time.perf_counter()

    def report() -> None:
        if progress:
            passed = sum(r["correct"] / r["n"] for r in results)
            progress(len(results), len(problems), 100 * passed / len(results) if results else 0.0)

    async def sample(problem: Problem, index: int) -> dict[str, Any]:
        request = Request(
            prompt=problem.prompt,
            max_tokens=settings["max_tokens"],
            think=options.think,
            thinking_budget=options.thinking_budget,
            sampling=settings["sampling"],
            seed=options.seed + index if options.samples > 1 else options.seed,
        )
        async with generating:
            generation = await backend.generate(request)
        async with scoring:
            score = await asyncio.to_thread(suite.score, problem, generation.content)
        return {
            "passed": score.passed,
            **score.detail,
            "finish_reason": generation.finish_reason,
            "completion_tokens": generation.completion_tokens,
            "answer": generation.content,
            "reasoning": generation.reasoning,
        }

    async def solve(problem: Problem) -> None:
        samples = await asyncio.gather(*(sample(problem, i) for i in range(options.samples)))
        record = {
            "id": problem.id,
            "group": problem.group,
            "n": len(samples),
            "correct": sum(s["passed"] for s in samples),
            "samples": samples,
        }
        if records:
            records.append(record)
        results.append(record)
        report()

    report()
    await asyncio.gather(*(solve(p) for p in pending))
    summary = summarize(settings, results, resumed=len(done), seconds=time.perf_counter() - started)
    if records:
        records.write_run(settings, summary)
    return summary


def summarize(
    settings: dict[str, Any], results: list[dict[str, Any]], *, resumed: int, seconds: float
) -> dict[str, Any]:
    metrics = aggregate(results, settings["samples"])
    published = reference(settings["suite"], settings["model_key"])
    finish = Counter(s["finish_reason"] for r in results for s in r["samples"])
    summary: dict[str, Any] = {
        "metrics": metrics,
        "published": None,
        "finish_reasons": dict(finish),
        "problems_resumed": resumed,
        "problems_run": len(results) - resumed,
        "seconds": round(seconds, 1),
        "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    if published is not None:
        ours = metrics.get(published.metric) if metrics["problems"] == settings["problems_total"] else None
        summary["published"] = {
            "value": published.value,
            "metric": published.metric,
            "source": published.source,
            "difference": None if ours is None else round(ours - published.value, 2),  # None on a subset
        }
    return summary
