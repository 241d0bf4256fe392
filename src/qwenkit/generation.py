"""`GenerationConfig`: reusable generation settings for `Model.chat`, `achat`, `stream`, `batch`.

Like transformers' `GenerationConfig`, an object you build once and pass around; unlike it, an
unset field (None) means "Qwen's recommended value for this model and mode" (see
`qwenkit.chat.sampling`), not a fixed library default. Keyword arguments given to a call
override the config's fields.

>>> cfg = GenerationConfig(max_tokens=256, temperature=0.2, think=False)
>>> model.chat("Explain RoPE briefly", config=cfg)
>>> model.chat("Same, more creative", config=cfg, temperature=0.9)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from typing import Any

from qwenkit.errors import BadRequest


@dataclass(frozen=True)
class GenerationConfig:
    max_tokens: int | None = None  # None: the call's default (1024 for chat)
    temperature: float | None = None  # 0: greedy
    top_p: float | None = None
    top_k: int | None = None
    min_p: float | None = None
    repetition_penalty: float | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    seed: int | None = None
    stop: Sequence[str] | None = None
    stop_token_ids: Sequence[int] | None = None
    logit_bias: Mapping[int, float] | None = None
    think: bool | None = None  # Qwen3 thinking on/off (None: the model's default)
    thinking_budget: int | None = None  # most reasoning tokens before thinking is closed
    reasoning_effort: str | None = None  # "none", "low", "medium", "high"
    extra: Mapping[str, Any] = field(default_factory=dict)  # anything else `Model.prepare` takes (tools...)

    def options(self) -> dict[str, Any]:
        """The set fields as keyword arguments for `Model.chat` / `Model.prepare`."""
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "extra"}
        out = {k: v for k, v in out.items() if v is not None}
        return {**out, **dict(self.extra)}

    def replace(self, **changes: Any) -> GenerationConfig:
        return replace(self, **changes)

    @classmethod
    def from_hf(cls, hf_config: Any, **changes: Any) -> GenerationConfig:
        """From a transformers `GenerationConfig` (max_new_tokens, do_sample, temperature...)."""
        get = lambda name: getattr(hf_config, name, None)  # noqa: E731
        values: dict[str, Any] = {
            "max_tokens": get("max_new_tokens"),
            "temperature": get("temperature"),
            "top_p": get("top_p"),
            "top_k": get("top_k"),
            "min_p": get("min_p"),
            "repetition_penalty": get("repetition_penalty"),
        }
        if get("do_sample") is False:
            values["temperature"] = 0.0
        return cls(**{k: v for k, v in values.items() if v is not None}, **changes)


def merge_options(config: GenerationConfig | Mapping[str, Any] | None, options: Mapping[str, Any]) -> dict[str, Any]:
    """`config`'s settings overridden by the call's keyword `options`."""
    if config is None:
        return dict(options)
    if isinstance(config, Mapping):
        base = dict(config)
    elif isinstance(config, GenerationConfig):
        base = config.options()
    else:
        raise BadRequest(f"config must be a qwenkit GenerationConfig or a dict, not {type(config).__name__}")
    return {**base, **options}
