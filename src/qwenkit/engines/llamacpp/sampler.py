"""A llama.cpp sampler chain built from `SamplingParams`, one per sequence."""

from __future__ import annotations

from typing import Iterator

import llama_cpp as C

from qwenkit.engines.base import SamplingParams
from qwenkit.errors import BadRequest

_PENALTY_WINDOW = 64  # tokens looked back at by the repetition/presence/frequency penalties


class SamplerChain:
    """Owns a `llama_sampler` chain; samples and accepts tokens for one sequence."""

    def __init__(self, vocab: C.llama_vocab_p, n_vocab: int, params: SamplingParams) -> None:
        self.ptr = C.llama_sampler_chain_init(C.llama_sampler_chain_default_params())
        try:
            for sampler in _samplers(vocab, n_vocab, params):
                C.llama_sampler_chain_add(self.ptr, sampler)  # the chain owns it from here
        except BaseException:
            self.close()
            raise

    def sample(self, ctx: C.llama_context_p, batch_index: int) -> int:
        """Pick the next token from the logits at `batch_index` (the chain accepts it)."""
        return C.llama_sampler_sample(self.ptr, ctx, batch_index)

    def accept(self, token: int) -> None:
        """Tell penalties and grammar about a token the chain did not pick (a forced one)."""
        C.llama_sampler_accept(self.ptr, token)

    def close(self) -> None:
        if self.ptr:
            C.llama_sampler_free(self.ptr)
            self.ptr = None


def _samplers(vocab: C.llama_vocab_p, n_vocab: int, p: SamplingParams) -> Iterator:
    """Yield the chain's samplers in order (each is owned by the chain once yielded)."""
    if p.grammar:
        grammar = C.llama_sampler_init_grammar(vocab, p.grammar.encode(), b"root")
        if not grammar:
            raise BadRequest("the output grammar could not be parsed")
        yield grammar
    if p.logit_bias:
        biases = (C.llama_logit_bias * len(p.logit_bias))()
        for i, (token, bias) in enumerate(p.logit_bias):
            if not 0 <= token < n_vocab:
                raise BadRequest(f"logit_bias names token {token}, outside the vocabulary (0..{n_vocab - 1})")
            biases[i].token, biases[i].bias = token, bias
        yield C.llama_sampler_init_logit_bias(n_vocab, len(p.logit_bias), biases)
    if p.repetition_penalty != 1.0 or p.presence_penalty or p.frequency_penalty:
        yield C.llama_sampler_init_penalties(
            n_vocab,
            _PENALTY_WINDOW, p.repetition_penalty, p.frequency_penalty, p.presence_penalty
        )
    if p.temperature <= 0:
        yield C.llama_sampler_init_greedy()
        return
    if p.top_k > 0:
        yield C.llama_sampler_init_top_k(p.top_k)
    if p.top_p < 1.0:
        yield C.llama_sampler_init_top_p(p.top_p, 1)
    if p.min_p > 0:
        yield C.llama_sampler_init_min_p(p.min_p, 1)
    yield C.llama_sampler_init_temp(p.temperature)
    seed = C.LLAMA_DEFAULT_SEED if p.seed is None else p.seed & 0xFFFFFFFF
    yield C.llama_sampler_init_dist(seed)
