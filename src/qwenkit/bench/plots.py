"""PNG charts of measurement results (matplotlib, headless)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure  # the object API: no pyplot state, no display, Agg when saving

from qwenkit.errors import QwenkitError


def _save(fig: Figure, path: Path) -> Path:
    fig.tight_layout()
    try:
        fig.savefig(path, dpi=110)
    except OSError as exc:
        raise QwenkitError(f"cannot write the plot {path}: {exc.strerror or exc}") from None
    return path


def _bar(ax: Any, labels: Sequence[str], spreads: Sequence[Mapping[str, float]], title: str) -> None:
    medians = [s["median"] for s in spreads]
    below = [s["median"] - s["min"] for s in spreads]
    above = [s["max"] - s["median"] for s in spreads]
    ax.bar(labels, medians, yerr=[below, above], capsize=4, color=["tab:blue", "tab:gray"][: len(labels)])
    ax.set_title(title)
    ax.set_ylabel("tokens/s (median, min-max)")


def plot_bench(result: Mapping[str, Any], path: Path) -> Path:
    """Prefill and decode tokens/s (beside llama-bench's when measured) and aggregate tokens/s per parallel level."""
    fig = Figure(figsize=(13, 4))
    axes = fig.subplots(1, 3)
    reference = result.get("llama_bench")
    for ax, key, title in (
        (axes[0], "prefill_tokens_per_s", f"prefill ({result['prompt_tokens']} tokens)"),
        (axes[1], "decode_tokens_per_s", f"decode ({result['gen_tokens']} tokens)"),
    ):
        labels, spreads = ["qwenkit"], [result[key]]
        if reference:
            labels.append("llama-bench")
            spreads.append(reference[key])
        _bar(ax, labels, spreads, title)
    levels = [int(n) for n in result["aggregate_tokens_per_s_by_parallel"]]
    spreads = list(result["aggregate_tokens_per_s_by_parallel"].values())
    medians = [s["median"] for s in spreads]
    axes[2].errorbar(
        levels,
        medians,
        yerr=[
            [m - s["min"] for m, s in zip(medians, spreads, strict=True)],
            [s["max"] - m for m, s in zip(medians, spreads, strict=True)],
        ],
        marker="o",
        capsize=4,
    )
    axes[2].set_xticks(levels)
    axes[2].set_xlabel("requests in parallel")
    axes[2].set_ylabel("aggregate tokens/s")
    axes[2].set_title("aggregate generation")
    fig.suptitle(f"{result['model']} on {result['engine']}, {result['threads']} threads, {result['repeats']} repeats")
    return _save(fig, path)


def plot_loadtest(runs: Mapping[str, Sequence[Mapping[str, Any]]], path: Path) -> Path:
    """Throughput and p95 end-to-end latency against concurrency, one line per server."""
    fig = Figure(figsize=(11, 4))
    left, right = fig.subplots(1, 2)
    for label, levels in runs.items():
        xs = [lv["concurrency"] for lv in levels]
        left.plot(xs, [lv["tokens_per_s"] for lv in levels], marker="o", label=label)
        p95 = [lv["e2e_latency_s"]["p95"] for lv in levels]
        right.plot(xs, [float("nan") if v is None else v for v in p95], marker="o", label=label)
    levels = sorted({lv["concurrency"] for run in runs.values() for lv in run})
    for ax, ylabel, title in (
        (left, "generated tokens/s (all requests)", "throughput"),
        (right, "seconds", "p95 end-to-end latency"),
    ):
        ax.set_xticks(levels)
        ax.set_xlabel("concurrent requests")
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        ax.legend()
        ax.grid(alpha=0.3)
    return _save(fig, path)
