"""Context checkpoints: the recurrent state of a sequence saved at chosen points of its cache.

A hybrid model (Qwen3.5, Qwen3-Next: gated DeltaNet layers beside full attention) keeps one
fixed-size recurrent state per sequence; it holds the whole past and cannot be cut back to a
shorter prefix (`llama_memory_seq_rm` of a tail fails for it), while the attention layers' KV
cells can. As llama-server does (`--ctx-checkpoints`), the scheduler saves the recurrent part
alone (`llama_state_seq_get_data_ext` with `LLAMA_STATE_SEQ_FLAGS_PARTIAL_ONLY`) at points
where a later prompt is likely to diverge: one token before a prompt's end (another choice of
the same request, the same prompt again) and after each opening of an assistant turn (a
conversation's next turn re-renders the last answer without its reasoning, so it stops
matching there). To reuse `n` cached entries it restores the nearest checkpoint not after `n`
into the sequence and then drops the attention cells after it; with none, it prefills anew.
A checkpoint is a byte string, so one saved in a slot restores into another (a prefix copied
across slots, `n` choices).
"""

from __future__ import annotations

import ctypes
from collections.abc import Sequence
from dataclasses import dataclass

import llama_cpp as C

from qwenkit.errors import QwenkitError

PARTIAL = C.LLAMA_STATE_SEQ_FLAGS_PARTIAL_ONLY


@dataclass(frozen=True)
class Checkpoint:
    """The recurrent state after a slot's first `n` cache entries."""

    n: int
    data: bytes


def save(ctx: C.llama_context_p, seq_id: int, n: int) -> Checkpoint:
    """The recurrent state of `seq_id` now, which follows its first `n` cache entries."""
    size = C.llama_state_seq_get_size_ext(ctx, seq_id, PARTIAL)
    buf = (ctypes.c_uint8 * size)()
    written = C.llama_state_seq_get_data_ext(ctx, buf, size, seq_id, PARTIAL)
    if written != size:
        raise QwenkitError(f"llama_state_seq_get_data_ext wrote {written} of {size} bytes")
    return Checkpoint(n, bytes(buf))


def restore(ctx: C.llama_context_p, seq_id: int, checkpoint: Checkpoint) -> bool:
    """Put `checkpoint`'s recurrent state into `seq_id` (its attention cells stay as they are)."""
    data = (ctypes.c_uint8 * len(checkpoint.data)).from_buffer_copy(checkpoint.data)
    read: int = C.llama_state_seq_set_data_ext(ctx, data, len(checkpoint.data), seq_id, PARTIAL)
    return read == len(checkpoint.data)


def nearest(checkpoints: Sequence[Checkpoint], n: int) -> Checkpoint | None:
    """The checkpoint with the most entries, at most `n` (None when every one is after `n`)."""
    return max((c for c in checkpoints if 0 < c.n <= n), key=lambda c: c.n, default=None)


def marks(keys: Sequence[object], turn_start: Sequence[int]) -> set[int]:
    """Where to keep checkpoints while `keys` runs: one entry before its end, and after each
    `turn_start` run of tokens (also at its very end, where a template leaves the model to open
    its reasoning: saved before the first sampled token runs)."""
    points = {len(keys) - 1} if len(keys) > 1 else set()
    width = len(turn_start)
    if width:
        for i in range(len(keys) - width + 1):
            if keys[i] == turn_start[0] and list(keys[i : i + width]) == list(turn_start):
                points.add(i + width)
    return {p for p in points if 0 < p <= len(keys)}
