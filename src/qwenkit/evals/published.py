"""Published scores a local run is held against (see shared reference qwen-facts.md for provenance)."""

from __future__ import annotations

import re
from dataclasses import dataclass

QWEN25_REPORT = "Qwen2.5 technical report (arXiv 2412.15115), instruct models table"
CODER_SECONDARY = "Qwen2.5-Coder-Instruct HumanEval as quoted by a secondary source (unverified)"


@dataclass(frozen=True)
class Reference:
    """A published number for (suite, model), in percent, and where it comes from."""

    value: float
    metric: str
    source: str


PUBLISHED: dict[tuple[str, str], Reference] = {
    ("humaneval", "qwen2.5-0.5b-instruct"): Reference(35.4, "pass@1", QWEN25_REPORT),
    ("humaneval", "qwen2.5-1.5b-instruct"): Reference(61.6, "pass@1", QWEN25_REPORT),
    ("humaneval", "qwen2.5-coder-0.5b-instruct"): Reference(61.6, "pass@1", CODER_SECONDARY),
    ("humaneval", "qwen2.5-coder-1.5b-instruct"): Reference(70.7, "pass@1", CODER_SECONDARY),
}


def model_key(name: str) -> str:
    """A model name or file name reduced to its family name, e.g. "qwen2.5-coder-0.5b-instruct"."""
    text = name.lower().rsplit("/", 1)[-1].removesuffix(".gguf")
    return re.sub(r"[-_.](gguf|q\d.*|f16|bf16|fp16|awq|gptq.*)$", "", text)


def reference(suite: str, model_name: str) -> Reference | None:
    """The published number for this suite and model, matched on the longest known name it contains."""
    key = model_key(model_name)
    known = [(model, ref) for (s, model), ref in PUBLISHED.items() if s == suite and model in key]
    return max(known, key=lambda item: len(item[0]))[1] if known else None
