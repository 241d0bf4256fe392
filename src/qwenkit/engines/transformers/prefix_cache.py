"""Finished sequences' KV, kept to start later requests that share their prefix.

An entry holds one sequence's real columns (per layer keys and values, [1, heads, tokens, dim],
on the layer's device) and the identity of the tokens they hold: token ids, except that each
image slot's tokens are the image's hash, so two different images at the same place in a
prompt never match. Entries are per LoRA adapter. The cache is bounded by the total tokens it
holds (least recently used first out); its memory is that total times
2 (keys, values) x layers x kv_heads x head_dim x the dtype's bytes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

Key = int | str  # a token id, or the hash of the image whose slot the token is in
LayerKV = tuple[torch.Tensor, torch.Tensor]


@dataclass
class Entry:
    adapter: str
    keys: tuple[Key, ...]
    layers: list[LayerKV]


class PrefixCache:
    """Entries by recency; `find` the longest shared prefix, `store` a finished sequence."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity  # tokens, over all entries
        self.entries: list[Entry] = []  # least recently used first

    @property
    def tokens(self) -> int:
        return sum(len(e.keys) for e in self.entries)

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for e in self.entries for kv in e.layers for t in kv)

    def find(self, adapter: str, keys: Sequence[Key]) -> tuple[Entry | None, int]:
        """The entry sharing the longest prefix with `keys` (marked recently used) and its length."""
        best, length = None, 0
        for entry in self.entries:
            if entry.adapter == adapter:
                shared = _shared(entry.keys, keys)
                if shared > length:
                    best, length = entry, shared
        if best is not None:
            self.entries.remove(best)
            self.entries.append(best)
        return best, length

    def store(self, adapter: str, keys: Sequence[Key], layers: list[LayerKV]) -> None:
        """Keep a sequence's KV unless an entry already covers it; entries it covers are dropped."""
        if not keys or len(keys) > self.capacity:
            return
        new = tuple(keys)
        for entry in self.entries:
            if entry.adapter == adapter and entry.keys[: len(new)] == new:
                self.entries.remove(entry)
                self.entries.append(entry)
                return
        self.entries = [e for e in self.entries if not (e.adapter == adapter and new[: len(e.keys)] == e.keys)]
        self.entries.append(Entry(adapter, new, layers))
        total = self.tokens
        while total > self.capacity:
            total -= len(self.entries.pop(0).keys)


def _shared(a: Sequence[Key], b: Sequence[Key]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n
