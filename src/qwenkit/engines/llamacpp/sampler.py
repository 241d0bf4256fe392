"""A llama.cpp sampler chain built from `SamplingParams`, one per sequence."""

from __future__ import annotations

import ctypes
from typing import Iterator

import llama_cpp as C
import numpy as np

from qwenkit.engines.base import SamplingParams
from qwenkit.errors import BadRequest

_PENALTY_WINDOW = 64  # tokens looked back at by the repetition/presence/frequency penalties


_TOKEN_DATA = np.dtype([("id", np.int32), ("logit", np.float32), ("p", np.float32)])


class SamplerChain:
    """Owns a `llama_sampler` chain (and a grammar, if any); samples tokens for one sequence.

    With a grammar, the chain samples first and the grammar checks only the chosen token; the
    grammar filters the whole vocabulary only when it rejects that token (as llama.cpp's own
    common sampler does). Checking 150k candidates every step would be ~20x slower.
    """

    def __init__(self, vocab: C.llama_vocab_p, n_vocab: int, params: SamplingParams) -> None:
        self.n_vocab = n_vocab
        self.grammar = None
        self.ptr = C.llama_sampler_chain_init(C.llama_sampler_chain_default_params())
        try:
            for sampler in _samplers(n_vocab, params):
                C.llama_sampler_chain_add(self.ptr, sampler)  # the chain owns it from here
            if params.grammar:
                self.grammar = C.llama_sampler_init_grammar(vocab, params.grammar.encode(), b"root")
                if not self.grammar:
                    raise BadRequest("the output grammar could not be parsed")
        except BaseException:
            self.close()
            raise

    def sample(self, ctx: C.llama_context_p, batch_index: int) -> int:
        """Pick the next token from the logits at `batch_index`, and accept it."""
        if self.grammar is None:
            return C.llama_sampler_sample(self.ptr, ctx, batch_index)  # accepts the token itself
        logits = np.ctypeslib.as_array(C.llama_get_logits_ith(ctx, batch_index), shape=(self.n_vocab,))
        token = self._apply(self.ptr, self._candidates(logits))
        one = np.zeros(1, dtype=_TOKEN_DATA)
        one["id"], one["logit"] = token, 1.0
        if not np.isfinite(self._filter(one)[0]["logit"]):  # rejected: constrain, then sample again
            candidates = self._filter(self._candidates(logits))
            token = self._apply(self.ptr, candidates)
        self.accept(token)
        return token

    def accept(self, token: int) -> None:
        """Record a chosen or forced token in penalties and grammar."""
        C.llama_sampler_accept(self.ptr, token)
        if self.grammar is not None:
            C.llama_sampler_accept(self.grammar, token)

    def close(self) -> None:
        if self.ptr:
            C.llama_sampler_free(self.ptr)
            self.ptr = None
        if self.grammar:
            C.llama_sampler_free(self.grammar)
            self.grammar = None

    def _candidates(self, logits: np.ndarray) -> np.ndarray:
        data = np.empty(self.n_vocab, dtype=_TOKEN_DATA)
        data["id"] = np.arange(self.n_vocab, dtype=np.int32)
        data["logit"] = logits
        data["p"] = 0.0
        return data

    def _filter(self, data: np.ndarray) -> np.ndarray:
        """The grammar's verdict: disallowed candidates get a logit of -inf (in place)."""
        C.llama_sampler_apply(self.grammar, _as_array(data))
        return data

    @staticmethod
    def _apply(chain: C.llama_sampler_p, data: np.ndarray) -> int:
        arr = _as_array(data)
        C.llama_sampler_apply(chain, arr)
        return int(data["id"][arr.contents.selected])


def _as_array(data: np.ndarray):
    arr = C.llama_token_data_array(
        data=data.ctypes.data_as(C.llama_token_data_p), size=len(data), selected=-1, sorted=False
    )
    return ctypes.pointer(arr)


def _samplers(n_vocab: int, p: SamplingParams) -> Iterator:
    """Yield the chain's samplers in order (each is owned by the chain once yielded)."""
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
