"""Prompt lookup: drafting a sequence's next tokens from its own context, and how many to draft.

Self-speculation without a draft model (llama.cpp's `ngram-*` speculators, transformers'
`prompt_lookup_num_tokens`): when the last few tokens occurred earlier in the prompt or the output,
the tokens that followed them there are a guess at what follows now. An engine decodes the guess
together with the real next token in one batch, samples every position with the sequence's own
sampler as plain decoding would, keeps the draft while the sampled tokens agree with it, and drops
the rest: the output is the one plain decoding gives, in fewer model passes when the text repeats.
Engine-neutral: token ids only.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal, cast

from qwenkit.errors import QwenkitError

#: How requests that do not say speculate: "ngram" (prompt lookup) or "off".
Speculation = Literal["ngram", "off"]
DEFAULT_DRAFT_MAX = 8  # drafted tokens per sequence and step at most

MAX_NGRAM = 4  # the longest suffix looked up; a longer match is a better guess
MIN_NGRAM = 2  # a single repeated token predicts too little to be worth a verified position
MAX_PAUSE = 64  # steps without drafting at most, after drafts that were all rejected


def speculation(value: str) -> Speculation:
    """`value` checked as a `Speculation` ("ngram" or "off")."""
    if value not in ("ngram", "off"):
        raise QwenkitError(f"unknown speculative decoding {value!r} (ngram or off)")
    return cast(Speculation, value)


class NgramDrafter:
    """One sequence's tokens, indexed by their n-grams (n = MIN_NGRAM..MAX_NGRAM): for each, where
    the token that followed its latest occurrence is."""

    def __init__(self, tokens: Iterable[int] = ()) -> None:
        self.tokens: list[int] = []
        self._next: dict[tuple[int, ...], int] = {}
        self.extend(tokens)

    def extend(self, tokens: Iterable[int]) -> None:
        """Append accepted tokens (prompt, sampled or forced; never unverified drafts)."""
        seq, index = self.tokens, self._next
        for token in tokens:
            seq.append(token)
            end = len(seq) - 1  # the n-grams that end just before `token` are followed by it
            for n in range(MIN_NGRAM, min(MAX_NGRAM, end) + 1):
                index[tuple(seq[end - n : end])] = end

    def draft(self, limit: int) -> list[int]:
        """Up to `limit` tokens that followed the longest suffix's latest earlier occurrence."""
        seq = self.tokens
        if limit <= 0:
            return []
        for n in range(min(MAX_NGRAM, len(seq)), MIN_NGRAM - 1, -1):
            start = self._next.get(tuple(seq[len(seq) - n :]))
            if start is not None:
                return seq[start : start + limit]
        return []


class DraftLength:
    """How many tokens a sequence drafts next, from how its drafts fared.

    The length grows by two while whole drafts are accepted and falls back to one more than the
    accepted part after a rejection. A draft rejected outright pauses drafting for a number of steps
    that doubles with each such miss in a row (up to MAX_PAUSE), so text that repeats nothing costs
    a verified position now and then, not every step.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.length = min(limit, 4)
        self._pause = 0
        self._backoff = 1

    def next(self) -> int:
        """The draft length for this step (0: do not draft now)."""
        if self._pause:
            self._pause -= 1
            return 0
        return self.length

    def record(self, drafted: int, accepted: int) -> None:
        """The outcome of one verified draft."""
        if drafted == 0:
            return
        if accepted == drafted:
            self.length = min(self.limit, self.length + 2)
        else:
            self.length = max(1, min(self.limit, accepted + 1))
        if accepted == 0:
            self._pause = self._backoff
            self._backoff = min(2 * self._backoff, MAX_PAUSE)
        else:
            self._backoff = 1
