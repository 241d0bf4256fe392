"""`SamplingParams` on ONNX Runtime GenAI: its search options, plus logit edits in numpy.

The runtime samples by itself: greedy (`do_sample=False`), or temperature, top-k and top-p with
a per-generator seed (`random_seed`, so a seed reproduces its output). What it lacks is done on
the logits row before it samples (`get_logits` -> edit -> `set_logits`), as the other engines
order them: logit bias, then the penalties over the last 64 generated tokens (repetition as
llama.cpp applies it, frequency, presence), then min-p (which therefore comes before top-k/top-p
here, not after).

A grammar is enforced by the runtime's llguidance inside `generate_next_token`, and `set_logits`
skips that mask: with a grammar, logit bias, presence/frequency penalties and min-p are refused,
and repetition_penalty becomes the runtime's own (which counts the prompt too).

Logprobs are the log-softmax of the row after logit bias and the penalties, before min-p and the
runtime's temperature/top-k/top-p (as the other engines define them); with a grammar the row gets
the runtime's repetition penalty (over prompt and output) in numpy for them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from qwenkit.engines.base import SamplingParams, TokenLogprob
from qwenkit.engines.logprobs import logprob_of
from qwenkit.errors import BadRequest

PENALTY_WINDOW = 64  # as the other engines: generated tokens looked back at by the penalties


def check_params(params: SamplingParams) -> None:
    """Refuse, by name, what this engine cannot honour, before the request is queued."""
    if not params.grammar:
        return
    refused = [
        name
        for name, unset in (
            ("logit_bias", not params.logit_bias),
            ("presence_penalty", params.presence_penalty == 0),
            ("frequency_penalty", params.frequency_penalty == 0),
            ("min_p", params.min_p == 0),
        )
        if not unset
    ]
    if refused:
        raise BadRequest(
            f"the onnx engine cannot combine {', '.join(refused)} with constrained output "
            "(a JSON schema or forced tool call); leave them unset or use --engine llamacpp"
        )


def search_options(params: SamplingParams, max_length: int) -> dict[str, Any]:
    """The runtime's search options for `params` (the KV buffer is sized by `max_length`)."""
    options: dict[str, Any] = {"max_length": max_length, "batch_size": 1, "num_beams": 1}
    if params.temperature <= 0:
        options["do_sample"] = False
    else:
        seed = params.seed if params.seed is not None else int(np.random.default_rng().integers(2**31 - 1))
        options.update(
            do_sample=True,
            temperature=params.temperature,
            top_k=params.top_k,
            top_p=params.top_p,
            random_seed=seed & 0x7FFFFFFF,
        )
    if params.grammar and params.repetition_penalty != 1.0:
        options["repetition_penalty"] = params.repetition_penalty
    return options


class LogitEdits:
    """The edits of one request's logits row that the runtime's sampler does not make."""

    def __init__(self, params: SamplingParams) -> None:
        p = params
        self.bias_ids = np.array([t for t, _ in p.logit_bias], dtype=np.int64)
        self.bias = np.array([b for _, b in p.logit_bias], dtype=np.float32)
        grammar = bool(p.grammar)
        self.repetition = p.repetition_penalty if not grammar else 1.0
        self.frequency = p.frequency_penalty
        self.presence = p.presence_penalty
        self.min_p = p.min_p if p.temperature > 0 else 0.0
        self.active = bool(p.logit_bias or self.repetition != 1.0 or self.frequency or self.presence or self.min_p > 0)

    def apply(self, logits: np.ndarray, generated: Sequence[int]) -> np.ndarray:
        """Edit the [vocab] row `logits` in place; `generated`: the tokens so far (forced included)."""
        return self.filter(self.adjust(logits, generated))

    def adjust(self, logits: np.ndarray, generated: Sequence[int]) -> np.ndarray:
        """Logit bias and the penalties, in place: the row logprobs are taken from."""
        if self.bias_ids.size:
            np.add.at(logits, self.bias_ids, self.bias)
        window = generated[-PENALTY_WINDOW:]
        if window and (self.repetition != 1.0 or self.frequency or self.presence):
            ids, counts = np.unique(np.asarray(window, dtype=np.int64), return_counts=True)
            values = logits[ids]
            if self.repetition != 1.0:
                values = np.where(values > 0, values / self.repetition, values * self.repetition)
            logits[ids] = values - counts.astype(np.float32) * self.frequency - self.presence
        return logits

    def filter(self, logits: np.ndarray) -> np.ndarray:
        """Min-p, in place (after logprobs are taken)."""
        if self.min_p > 0:
            logits[logits < logits.max() + np.log(self.min_p)] = -np.inf
        return logits


def runtime_repetition(logits: np.ndarray, sequence: Sequence[int], penalty: float) -> np.ndarray:
    """The runtime's own repetition penalty (used with a grammar) on a copy of `logits`: every
    token of `sequence` (prompt and output) once, as ONNX Runtime GenAI applies it."""
    if penalty == 1.0 or not len(sequence):
        return logits
    logits = logits.copy()
    ids = np.unique(np.asarray(sequence, dtype=np.int64))
    values = logits[ids]
    logits[ids] = np.where(values > 0, values / penalty, values * penalty)
    return logits


def prompt_logprobs(prompt: Sequence[int], logits: np.ndarray, top: int) -> list[TokenLogprob | None]:
    """Each prompt token's logprob from the prefill's [prompt, vocab] logits (None for the first)."""
    return [None] + [logprob_of(logits[i], prompt[i + 1], top) for i in range(len(prompt) - 1)]
