"""The demo task `qwenkit tune --data demo` learns: answer every question with one JSON object in
a fixed house format, `{"answer": "...", "format": "qwenkit-v1"}`, which no base model does unasked.

The questions are easy (sums, successors, larger of two, upper case) so the score measures the
format and the stop, not knowledge. `python -m qwenkit.tune.demo` regenerates the shipped
train.jsonl / heldout.jsonl (seeded; held-out questions never appear in training).
"""

from __future__ import annotations

import json
import random
from importlib import resources
from pathlib import Path
from typing import Any

WORDS = [
    "river",
    "apple",
    "cloud",
    "stone",
    "garden",
    "window",
    "silver",
    "rocket",
    "forest",
    "candle",
    "planet",
    "bridge",
    "mirror",
    "engine",
    "lantern",
    "harbor",
    "meadow",
    "pepper",
    "violin",
    "tunnel",
    "copper",
    "falcon",
    "marble",
    "orchid",
    "canyon",
    "glacier",
]


def reply(answer: str) -> str:
    return json.dumps({"answer": answer, "format": "qwenkit-v1"})


def _question(rng: random.Random) -> tuple[str, str]:
    kind = rng.randrange(4)
    if kind == 0:
        a, b = rng.randrange(10, 90), rng.randrange(10, 90)
        return f"What is {a} + {b}?", str(a + b)
    if kind == 1:
        n = rng.randrange(100, 999)
        return f"Which number comes right after {n}?", str(n + 1)
    if kind == 2:
        a, b = rng.sample(range(10, 999), 2)
        return f"Which is larger, {a} or {b}?", str(max(a, b))
    word = rng.choice(WORDS)
    return f"Write the word '{word}' in upper case.", word.upper()


def rows(n_train: int = 80, n_held_out: int = 20, seed: int = 15) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Train and held-out chat rows; no held-out question is asked in training."""
    rng = random.Random(seed)
    seen: set[str] = set()
    out: list[dict[str, Any]] = []
    while len(out) < n_train + n_held_out:
        question, answer = _question(rng)
        if question in seen:
            continue
        seen.add(question)
        messages = [{"role": "user", "content": question}, {"role": "assistant", "content": reply(answer)}]
        out.append({"messages": messages})
    return out[:n_train], out[n_train:]


def path(split: str) -> Path:
    """The shipped file of `split` ("train" or "heldout")."""
    return Path(str(resources.files(__package__).joinpath(f"{split}.jsonl")))


def write(directory: Path) -> None:
    train, held = rows()
    for name, data in (("train", train), ("heldout", held)):
        (directory / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in data), encoding="utf-8")
