"""A llama.cpp sampler chain built from `SamplingParams`, one per sequence."""

from __future__ import annotations

import ctypes
from collections import Counter, deque
from collections.abc import Iterator

import llama_cpp as C
import numpy as np

from qwenkit.engines.base import SamplingParams, TokenLogprob
from qwenkit.engines.logprobs import logprob_of
from qwenkit.errors import BadRequest, QwenkitError

_PENALTY_WINDOW = 64  # tokens looked back at by the repetition/presence/frequency penalties


_LOGIT_LIMIT = np.float32(1e30)  # penalties never push a logit past this (softmax stays finite)
_TOKEN_DATA = np.dtype([("id", np.int32), ("logit", np.float32), ("p", np.float32)])


class SamplerChain:
    """Samples tokens for one sequence: sparse logit edits in numpy, then a `llama_sampler` chain.

    Logit bias and the penalties touch a few dozen token ids, so they edit the logits row in
    place instead of running as llama.cpp samplers (its penalties sampler does a hash lookup
    for each of ~150k candidates, every token). Greedy without a grammar is then one argmax.
    With a grammar, the chain samples first and the grammar checks only the chosen token; the
    grammar filters the whole vocabulary only when it rejects that token (as llama.cpp's own
    common sampler does). Checking 150k candidates every step would be ~20x slower.
    """

    def __init__(self, vocab: C.llama_vocab_p, n_vocab: int, params: SamplingParams) -> None:
        self.n_vocab = n_vocab
        self.grammar = None
        self.greedy = params.temperature <= 0
        self.bias = _LogitBias(params.logit_bias) if params.logit_bias else None
        penalized = params.repetition_penalty != 1.0 or params.presence_penalty or params.frequency_penalty
        self.penalties = _Penalties(params) if penalized else None
        self.ptr = C.llama_sampler_chain_init(C.llama_sampler_chain_default_params())
        try:
            for sampler in _samplers(params):
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
        logits = np.ctypeslib.as_array(C.llama_get_logits_ith(ctx, batch_index), shape=(self.n_vocab,))
        if self.bias is not None:
            self.bias.apply(logits)
        if self.penalties is not None:
            self.penalties.apply(logits)
        if self.grammar is None:
            # the chain reads the edited row
            token = int(logits.argmax()) if self.greedy else C.llama_sampler_sample(self.ptr, ctx, batch_index)
            self._remember(token)
            return token
        token = self._apply(self.ptr, self._candidates(logits))
        if not self._allows(token):  # rejected: constrain, then sample again
            token = self._apply(self.ptr, self._filter(self._candidates(logits)))
            if not self._allows(token):  # degenerate logits (e.g. all -inf): the likeliest allowed token
                allowed = self._filter(self._candidates(logits))
                token = int(allowed["id"][np.argmax(allowed["logit"])])
                if not self._allows(token):  # accepting it would throw inside llama.cpp
                    raise QwenkitError("the output grammar allows no token here")
        self.accept(token)
        return token

    def _allows(self, token: int) -> bool:
        one = np.zeros(1, dtype=_TOKEN_DATA)
        one["id"], one["logit"] = token, 1.0
        return bool(np.isfinite(self._filter(one)[0]["logit"]))

    def accept(self, token: int) -> None:
        """Record a chosen or forced token in the chain, the penalties and the grammar."""
        C.llama_sampler_accept(self.ptr, token)
        if self.grammar is not None:
            C.llama_sampler_accept(self.grammar, token)
        self._remember(token)

    def _remember(self, token: int) -> None:
        if self.penalties is not None:
            self.penalties.accept(token)

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


def token_logprob(ctx: C.llama_context_p, batch_index: int, n_vocab: int, token: int, top: int) -> TokenLogprob:
    """`token`'s logprob and the `top` most likely tokens from the logits row at `batch_index`
    (as `SamplerChain.sample` left it: after logit bias and penalties, before temperature)."""
    return logprob_of(np.ctypeslib.as_array(C.llama_get_logits_ith(ctx, batch_index), shape=(n_vocab,)), token, top)


def _as_array(data: np.ndarray) -> ctypes._Pointer[C.llama_token_data_array]:
    arr = C.llama_token_data_array(
        data=data.ctypes.data_as(C.llama_token_data_p), size=len(data), selected=-1, sorted=False
    )
    return ctypes.pointer(arr)


class _LogitBias:
    """OpenAI `logit_bias`: fixed amounts added to a few token ids (checked by `check_request`)."""

    def __init__(self, pairs: tuple[tuple[int, float], ...]) -> None:
        merged: dict[int, float] = {}
        for token, bias in pairs:
            merged[token] = merged.get(token, 0.0) + bias
        self.ids = np.fromiter(merged, dtype=np.int64, count=len(merged))
        self.amounts = np.fromiter(merged.values(), dtype=np.float32, count=len(merged))

    def apply(self, logits: np.ndarray) -> None:
        logits[self.ids] += self.amounts


class _Penalties:
    """llama.cpp's penalties over the last 64 accepted tokens, applied to those ids only.

    Repetition divides a positive logit by the penalty and multiplies a negative one; then
    frequency (times the count) and presence (once) are subtracted.
    """

    def __init__(self, p: SamplingParams) -> None:
        self.repeat = np.float32(p.repetition_penalty)
        self.frequency = np.float32(p.frequency_penalty)
        self.presence = np.float32(p.presence_penalty)
        self.window: deque[int] = deque(maxlen=_PENALTY_WINDOW)
        self.counts: Counter[int] = Counter()

    def accept(self, token: int) -> None:
        if len(self.window) == self.window.maxlen:
            old = self.window[0]
            self.counts[old] -= 1
            if not self.counts[old]:
                del self.counts[old]
        self.window.append(token)
        self.counts[token] += 1

    def apply(self, logits: np.ndarray) -> None:
        if not self.counts:
            return
        ids = np.fromiter(self.counts, dtype=np.int64, count=len(self.counts))
        counts = np.fromiter(self.counts.values(), dtype=np.float32, count=len(self.counts))
        x = logits[ids]
        # a penalty near 0 (or 0 once in float32) makes infinities, which would be NaN in the sampler
        with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
            x = np.where(x <= 0, x * self.repeat, x / self.repeat)
        logits[ids] = np.clip(x - (counts * self.frequency + self.presence), -_LOGIT_LIMIT, _LOGIT_LIMIT)


def _samplers(p: SamplingParams) -> Iterator[C.llama_sampler_p]:
    """Yield the chain's samplers in order (each is owned by the chain once yielded)."""
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
