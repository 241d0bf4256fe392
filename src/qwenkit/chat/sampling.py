"""Qwen's recommended sampling settings, filled in around what the user set."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import fields
from typing import Any

from qwenkit.engines.base import SamplingParams
from qwenkit.errors import BadRequest

# Qwen3 model cards: never sample greedily in thinking mode (it loops).
THINKING = {"temperature": 0.6, "top_p": 0.95, "top_k": 20, "min_p": 0.0}
NON_THINKING = {"temperature": 0.7, "top_p": 0.8, "top_k": 20, "min_p": 0.0}
# Qwen2 / Qwen2.5 Instruct generation_config.json (with T=0.7, top_p=0.8, top_k=20).
QWEN2_REPETITION_PENALTY = 1.05


def sampling_defaults(
    overrides: Mapping[str, Any] | None = None, *, thinking: bool, architecture: str | None = None
) -> dict[str, Any]:
    """`SamplingParams` field values: the user's settings (None means unset) over Qwen's
    recommendation for the mode. Non-thinking Qwen2-family models (`architecture` starting
    with "qwen2") also get their repetition_penalty of 1.05."""
    given = {key: value for key, value in (overrides or {}).items() if value is not None}
    unknown = sorted(set(given) - {f.name for f in fields(SamplingParams)})
    if unknown:
        raise BadRequest(f"unknown sampling parameter(s): {', '.join(unknown)}")
    values: dict[str, Any] = dict(THINKING if thinking else NON_THINKING)
    if not thinking and (architecture or "").lower().startswith("qwen2"):
        values["repetition_penalty"] = QWEN2_REPETITION_PENALTY
    values.update(given)
    return values
