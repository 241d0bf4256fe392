"""The loss curves of a run (train and held-out loss against steps), as a PNG."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any


def plot_losses(records: Sequence[dict[str, Any]], out: Path, title: str = "LoRA fine-tune") -> Path | None:
    """Write the curves of `records` (log.jsonl rows) to `out`; None when there is nothing to plot."""
    train = [(r["step"], r["train_loss"]) for r in records if "train_loss" in r]
    held = [(r["step"], r["eval_loss"]) for r in records if "eval_loss" in r]
    if not train and not held:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=120)
    for points, label, style in ((train, "train", "-"), (held, "held-out", "--")):
        if points:
            ax.plot([p[0] for p in points], [p[1] for p in points], style, marker="o", markersize=3, label=label)
    ax.set_xlabel("step")
    ax.set_ylabel("loss (assistant tokens)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
    return out
