"""qwenkit's `SamplingParams` to vLLM's, and vLLM's logprobs back to `TokenLogprob`s.

vLLM samples, applies logit bias, penalties, the grammar (`StructuredOutputsParams(grammar=...)`:
xgrammar reads the GBNF qwenkit writes for llama.cpp), end-of-generation and stop token ids, and
the native thinking budget. Stop strings, text and forced tokens stay qwenkit's
(`engines.output.RequestOutput`), so they behave as on every other engine; vLLM streams token ids
only (`detokenize=False`), one delta at a time (`RequestOutputKind.DELTA`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from vllm import SamplingParams as VllmSamplingParams
from vllm.sampling_params import RequestOutputKind, StructuredOutputsParams

from qwenkit.engines.base import SamplingParams, TokenLogprob


def to_vllm(params: SamplingParams, *, max_tokens: int, thinking_budget: int | None) -> VllmSamplingParams:
    """vLLM's parameters for (the rest of) one choice: `max_tokens` is what is left of it."""
    return VllmSamplingParams(
        n=1,
        max_tokens=max_tokens,
        temperature=max(params.temperature, 0.0),
        top_p=params.top_p,
        top_k=params.top_k,
        min_p=params.min_p,
        repetition_penalty=params.repetition_penalty,
        presence_penalty=params.presence_penalty,
        frequency_penalty=params.frequency_penalty,
        seed=params.seed,
        stop_token_ids=list(params.stop_token_ids),
        logit_bias=dict(params.logit_bias) or None,
        logprobs=params.logprobs,
        prompt_logprobs=params.prompt_logprobs,
        structured_outputs=StructuredOutputsParams(grammar=params.grammar) if params.grammar else None,
        thinking_token_budget=thinking_budget,
        output_kind=RequestOutputKind.DELTA,
        detokenize=False,
        skip_special_tokens=False,
    )


def token_logprob(entries: Mapping[int, Any] | None, token: int, top: int | None) -> TokenLogprob | None:
    """A position's `{token: Logprob(logprob, rank, ...)}` as a `TokenLogprob` (None if absent)."""
    if entries is None or top is None or token not in entries:
        return None
    ranked = sorted((e.rank, t, float(e.logprob)) for t, e in entries.items() if e.rank is not None and e.rank >= 1)
    alternatives = tuple((t, logprob) for _rank, t, logprob in ranked[:top])
    return TokenLogprob(token, float(entries[token].logprob), alternatives)


def prompt_logprobs(
    prompt: Sequence[int], rows: Sequence[Mapping[int, Any] | None], top: int
) -> list[TokenLogprob | None]:
    """vLLM's prompt logprobs (None for the first token) as qwenkit's."""
    return [None if i == 0 else token_logprob(rows[i], token, top) for i, token in enumerate(prompt)]
