"""The scheduler's slots and their prefix cache: which free slot a request runs in, and how much of
its cache it reuses.

Each slot is one llama.cpp sequence id. A finished slot keeps its KV cache, so a new request that
shares a prefix with it (a system prompt, the earlier turns of a chat) skips recomputing that
prefix; a prefix held by another slot is copied in by the scheduler (`llama_memory_seq_cp`).
A slot's cache is a list of keys, a token id per text token and ``(image sha256, i)`` per image
token, so prefixes are compared by image content, never by placeholder ids: two different images
at the same place share nothing. An image is reused whole or not at all. A cache is reused only
by a request on the same LoRA adapter set. Positions are kept per cache entry apart from cell
counts: with M-RoPE an image's tokens all sit at its first position and the text after it
continues `n_pos` (its grid size) further on, not `n_tokens`.

On a model with recurrent layers a slot also keeps `checkpoints` (`checkpoints.py`): its cache
can be cut back only to one of them (or emptied), and `reachable` says how much of it that keeps.
"""

from __future__ import annotations

from collections.abc import Sequence

from qwenkit.engines.base import Adapters, Request, TokenLogprob
from qwenkit.engines.llamacpp.checkpoints import Checkpoint, nearest
from qwenkit.engines.llamacpp.sampler import SamplerChain
from qwenkit.engines.llamacpp.vision import PreparedImage
from qwenkit.engines.output import RequestOutput
from qwenkit.engines.speculation import DraftLength, NgramDrafter

#: A cache entry: a text token id, or (image sha256, index) for one of an image's LLM tokens.
Key = int | tuple[str, int]


class Slot:
    """One llama.cpp sequence: its cached entries and the request running in it, if any."""

    def __init__(self, seq_id: int) -> None:
        self.seq_id = seq_id
        self.cached: list[Key] = []  # entries whose KV is in the cache for this sequence
        self.positions: list[int] = []  # the position of each cached entry (M-RoPE: not its index)
        self.end_pos = 0  # the position that follows the cached entries
        self.adapters: Adapters = ()  # the adapter set that cache was computed with
        self.request: Request | None = None
        self.feed: list[Key] = []  # entries to decode next (prompt rest, last sample, forced)
        self.images: dict[str, PreparedImage] = {}  # the running request's images, by sha256
        self.out: RequestOutput | None = None
        self.sampler: SamplerChain | None = None
        self.last_used = 0.0
        self.followers: list[Request] = []  # the other choices of an n > 1 request, admitted after its prefill
        self.prompt_logprobs: list[TokenLogprob | None] | None = None  # while the prompt is scored
        self.top_logprobs: int | None = None  # the request's `logprobs` (None: none computed)
        self.drafter: NgramDrafter | None = None  # its context's n-grams, while it speculates
        self.draft_length: DraftLength | None = None
        self.checkpoints: list[Checkpoint] = []  # recurrent states saved along `cached` (hybrid models)
        self.marks: set[int] = set()  # cache lengths at which the running prompt saves a checkpoint

    @property
    def busy(self) -> bool:
        return self.request is not None

    def position(self, i: int) -> int:
        """The position of cache entry `i` (the next position for i == len(cached))."""
        return self.positions[i] if i < len(self.positions) else self.end_pos

    def keep(self, n: int) -> None:
        """Forget the cache entries from `n` on (the caller drops their KV cells)."""
        self.end_pos = self.position(n)
        del self.cached[n:]
        del self.positions[n:]
        self.checkpoints = [c for c in self.checkpoints if c.n <= n]

    def extend_text(self, tokens: Sequence[int]) -> None:
        self.cached.extend(tokens)
        self.positions.extend(range(self.end_pos, self.end_pos + len(tokens)))
        self.end_pos += len(tokens)

    def extend_image(self, image: PreparedImage, end_pos: int) -> None:
        self.cached.extend((image.sha256, i) for i in range(image.n_tokens))
        self.positions.extend([self.end_pos] * image.n_tokens)
        self.end_pos = end_pos

    def running(self) -> tuple[RequestOutput, SamplerChain]:
        """The busy slot's output and sampler chain (set together with `request`)."""
        if self.out is None or self.sampler is None:
            raise RuntimeError(f"slot {self.seq_id} runs no request")
        return self.out, self.sampler


def common_prefix(a: Sequence[Key], b: Sequence[Key]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


def shared_prefix(slot: Slot, prompt: Sequence[Key], adapters: Adapters) -> int:
    """Prompt tokens `slot`'s cache holds for `prompt` on `adapters` (none across adapter sets)."""
    return common_prefix(slot.cached, prompt) if slot.adapters == adapters else 0


def reachable(slot: Slot, n: int, *, recurrent: bool) -> int:
    """How many of `n` wanted cache entries `slot` can keep: all of them where its cache can be
    cut anywhere; with recurrent layers, all only when nothing is cut, else up to its nearest
    checkpoint (0: none, a full prefill)."""
    if not recurrent or n >= len(slot.cached) or n == 0:
        return min(n, len(slot.cached))
    checkpoint = nearest(slot.checkpoints, n)
    return checkpoint.n if checkpoint is not None else 0


def slot_for(free: list[Slot], running: set[int], prompt: Sequence[Key], adapters: Adapters = ()) -> Slot:
    """The free slot to run `prompt` in (on `adapters`), given the sequence ids `running` already.

    First, keep the running sequences contiguous: llama.cpp decodes sequences in separate KV
    streams together only when their ids are consecutive, so every gap costs one more pass
    through the model per step (4 sequences in slots 0,5,6,7 take 1.6x as long as in 0-3).
    A prefix held in another slot is copied in by `_start`, so this costs no recomputation.
    Then overwrite the least cache: a slot continuing this conversation, or an empty one, loses
    nothing, so one user's request never evicts another's conversation for the sake of a few
    shared template tokens. Last, the longest shared prefix (no copy), the slot used longest ago.
    """

    def cost(slot: Slot) -> tuple[int, int, int, float]:
        shared = shared_prefix(slot, prompt, adapters)
        return runs(running | {slot.seq_id}), len(slot.cached) - shared, -shared, slot.last_used

    return min(free, key=cost)


def reusable(keys: Sequence[Key], shared: int) -> int:
    """How many of `shared` matching entries to keep: at least one key left to decode (for
    logits), and never part of an image (back to its first token)."""
    n = min(shared, len(keys) - 1)
    head = keys[n]
    return n - head[1] if isinstance(head, tuple) else n


def text_run(feed: Sequence[Key], limit: int) -> int:
    """How many text tokens `feed` starts with, up to `limit`."""
    for i in range(min(limit, len(feed))):
        if isinstance(feed[i], tuple):
            return i
    return min(limit, len(feed))


def runs(seq_ids: set[int]) -> int:
    """How many runs of consecutive ids `seq_ids` has (each is one llama.cpp ubatch)."""
    return sum(1 for i in seq_ids if i - 1 not in seq_ids)


def expand(prompt: Sequence[int], images: Sequence[PreparedImage], image_pad: int | None) -> list[Key]:
    """`prompt` with each `image_pad` expanded into its image's keys (the prompt as the model sees it)."""
    if not images:
        return list(prompt)
    keys: list[Key] = []
    pending = iter(images)
    for token in prompt:
        if token == image_pad:
            image = next(pending)
            keys.extend((image.sha256, i) for i in range(image.n_tokens))
        else:
            keys.append(token)
    return keys
