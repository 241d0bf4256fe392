"""Logprobs from a numpy logits row, shared by the engines that hand logits over as numpy (llama.cpp, ONNX)."""

from __future__ import annotations

import numpy as np

from qwenkit.engines.base import TokenLogprob


def logprob_of(logits: np.ndarray, token: int, top: int) -> TokenLogprob:
    """Log-softmax of a [vocab] row at `token`, with the `top` best (token, logprob) pairs."""
    peak = float(logits.max())
    lse = peak + float(np.log(np.exp(logits - peak).sum(dtype=np.float64)))
    best: tuple[tuple[int, float], ...] = ()
    if top > 0:
        ids = np.argpartition(logits, -top)[-top:]
        ids = ids[np.argsort(-logits[ids], kind="stable")]
        best = tuple((int(i), float(logits[i]) - lse) for i in ids)
    return TokenLogprob(token, float(logits[token]) - lse, best)
