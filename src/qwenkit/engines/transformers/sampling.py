"""Per-sequence sampling from `SamplingParams` with transformers' logits processors.

The order mirrors the llama.cpp engine's sampler chain: logit bias, then the penalties
(repetition, frequency, presence) over the last 64 generated tokens (forced ones included),
then greedy when `temperature <= 0`, else top-k, top-p, min-p, temperature and a draw from a
per-request `torch.Generator` (seeded by `seed`, so a seed reproduces its output whatever else
the engine is running). Grammars are the llama.cpp engine's alone.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

import torch
from transformers.generation.logits_process import (
    MinPLogitsWarper,
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopPLogitsWarper,
)

from qwenkit.engines.base import SamplingParams, TokenLogprob
from qwenkit.errors import BadRequest

_LOGIT_LIMIT = 1e30
PENALTY_WINDOW = 64  # as the llama.cpp engine: tokens looked back at by the penalties


def check_params(params: SamplingParams) -> None:
    """Refuse what this engine cannot do, before the request is queued."""
    if params.grammar:
        raise BadRequest(
            "grammar-constrained output (JSON schema, forced tool calls) is not supported by the "
            "transformers engine; use the llama.cpp engine (--engine llamacpp) for it"
        )


class _Penalties:
    """llama.cpp's penalties: repetition (HF's processor, same rule), then frequency and presence."""

    def __init__(self, p: SamplingParams) -> None:
        self.repetition = (
            RepetitionPenaltyLogitsProcessor(p.repetition_penalty) if p.repetition_penalty != 1.0 else None
        )
        self.frequency = p.frequency_penalty
        self.presence = p.presence_penalty

    def __call__(self, window: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        if window.numel() == 0:
            return scores
        if self.repetition is not None:
            scores = self.repetition(window[None], scores)
        if self.frequency or self.presence:
            ids, counts = torch.unique(window, return_counts=True)
            scores[0, ids] -= counts.to(scores.dtype) * self.frequency + self.presence
        return scores.clamp_(-_LOGIT_LIMIT, _LOGIT_LIMIT)  # a penalty near 0 makes infinities (NaN when sampled)


class RowSampler:
    """Picks the next token of one sequence from its row of logits."""

    def __init__(self, params: SamplingParams, device: torch.device) -> None:
        p = params
        self.greedy = p.temperature <= 0
        self.bias: tuple[torch.Tensor, torch.Tensor] | None = None
        if p.logit_bias:
            ids = torch.tensor([t for t, _ in p.logit_bias], dtype=torch.long, device=device)
            values = torch.tensor([b for _, b in p.logit_bias], dtype=torch.float32, device=device)
            self.bias = (ids, values)
        penalized = p.repetition_penalty != 1.0 or p.presence_penalty or p.frequency_penalty
        self.penalties = _Penalties(p) if penalized else None
        self.top_k = p.top_k
        self.warpers = []
        if not self.greedy:
            if p.top_p < 1.0:
                self.warpers.append(TopPLogitsWarper(p.top_p))
            if p.min_p > 0:
                self.warpers.append(MinPLogitsWarper(p.min_p))
            self.warpers.append(TemperatureLogitsWarper(p.temperature))
        seed = random.getrandbits(63) if p.seed is None else p.seed & 0xFFFFFFFF
        self.generator = None if self.greedy else torch.Generator(device=device).manual_seed(seed)
        self.device = device

    def sample(self, logits: torch.Tensor, generated: Sequence[int]) -> int:
        """`logits`: this sequence's [vocab] row; `generated`: its tokens so far (forced included)."""
        return self.pick(self.scores(logits, generated))

    def scores(self, logits: torch.Tensor, generated: Sequence[int]) -> torch.Tensor:
        """The [1, vocab] scores after logit bias and penalties (what logprobs are taken from)."""
        scores = logits.to(torch.float32)[None].clone()
        if self.bias is not None:
            scores[0, self.bias[0]] += self.bias[1]
        if self.penalties is not None:
            window = torch.tensor(generated[-PENALTY_WINDOW:], dtype=torch.long, device=scores.device)
            scores = self.penalties(window, scores)
        return scores

    def pick(self, scores: torch.Tensor) -> int:
        """Greedy, or top-k, top-p, min-p, temperature and a draw (`scores` is left as it was)."""
        if self.greedy:
            return int(scores[0].argmax())
        candidates = None
        if self.top_k > 0 and self.top_k < scores.shape[-1]:
            # llama.cpp's order (top-k first) lets the rest work on k candidates, not the vocabulary
            scores, candidates = torch.topk(scores, self.top_k, dim=-1)
        for warper in self.warpers:
            scores = warper(None, scores)
        probs = torch.softmax(scores, dim=-1)
        choice = int(torch.multinomial(probs[0], 1, generator=self.generator))
        return int(candidates[0, choice]) if candidates is not None else choice


def logprob_of(scores: torch.Tensor, token: int, top: int) -> TokenLogprob:
    """Log-softmax of a [vocab] row at `token`, with the `top` best (token, logprob) pairs."""
    logprobs = torch.log_softmax(scores.to(torch.float32), dim=-1)
    best: tuple[tuple[int, float], ...] = ()
    if top > 0:
        values, ids = torch.topk(logprobs, top)
        best = tuple(zip(ids.tolist(), values.tolist(), strict=True))
    return TokenLogprob(token, float(logprobs[token]), best)


__all__ = ["PENALTY_WINDOW", "RowSampler", "check_params", "logprob_of"]
