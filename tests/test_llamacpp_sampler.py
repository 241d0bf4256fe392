"""The llama.cpp engine's numpy logit edits against llama.cpp's own samplers, on random logits."""

from __future__ import annotations

import llama_cpp as C
import numpy as np
import pytest

from qwenkit.engines.base import SamplingParams
from qwenkit.engines.llamacpp.sampler import _PENALTY_WINDOW, _TOKEN_DATA, _as_array, _LogitBias, _Penalties

N_VOCAB = 5000


def _llama_apply(sampler, logits: np.ndarray) -> np.ndarray:
    """The logits after one llama.cpp sampler has been applied to the whole vocabulary."""
    data = np.empty(len(logits), dtype=_TOKEN_DATA)
    data["id"] = np.arange(len(logits), dtype=np.int32)
    data["logit"] = logits
    data["p"] = 0.0
    C.llama_sampler_apply(sampler, _as_array(data))
    out = np.empty_like(logits)
    out[data["id"]] = data["logit"]
    return out


@pytest.mark.parametrize(
    "params",
    [
        dict(repetition_penalty=1.05),
        dict(repetition_penalty=0.8),
        dict(frequency_penalty=0.7),
        dict(presence_penalty=1.5),
        dict(repetition_penalty=1.3, frequency_penalty=0.2, presence_penalty=-0.5),
    ],
)
@pytest.mark.parametrize("history", [0, 10, _PENALTY_WINDOW + 37])  # none, some, past the window
def test_penalties_match_llama_cpp(params, history):
    rng = np.random.default_rng(history)
    tokens = rng.integers(0, 40, size=history).tolist()  # few distinct ids: counts above 1
    p = SamplingParams(**params)
    reference = C.llama_sampler_init_penalties(
        N_VOCAB, _PENALTY_WINDOW, p.repetition_penalty, p.frequency_penalty, p.presence_penalty
    )
    ours = _Penalties(p)
    try:
        for t in tokens:
            C.llama_sampler_accept(reference, t)
            ours.accept(t)
        logits = rng.normal(0, 3, size=N_VOCAB).astype(np.float32)
        expected = _llama_apply(reference, logits)
        ours.apply(logits)
        np.testing.assert_array_equal(logits, expected)
    finally:
        C.llama_sampler_free(reference)


def test_logit_bias_matches_llama_cpp():
    pairs = ((3, 5.0), (4999, -100.0), (3, 1.5), (0, 0.25))  # a repeated id adds up
    biases = (C.llama_logit_bias * len(pairs))()
    for i, (token, bias) in enumerate(pairs):
        biases[i].token, biases[i].bias = token, bias
    reference = C.llama_sampler_init_logit_bias(N_VOCAB, len(pairs), biases)
    try:
        logits = np.random.default_rng(0).normal(size=N_VOCAB).astype(np.float32)
        expected = _llama_apply(reference, logits)
        _LogitBias(pairs).apply(logits)
        np.testing.assert_allclose(logits, expected, rtol=0, atol=1e-6)
    finally:
        C.llama_sampler_free(reference)
