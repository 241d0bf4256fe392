"""Continuous batching on llama.cpp: every live sequence advances in one `llama_decode` per step.

Each request holds a slot (one llama.cpp sequence id). A step gathers one token from every
decoding slot plus chunks of pending prompt (chunked prefill), decodes them together, then
samples each slot from its own row of logits with its own sampler chain. Requests join and
leave between steps. A finished slot keeps its KV cache, so a new request that shares a prefix
with it (a system prompt, the earlier turns of a chat) skips recomputing that prefix; a prefix
held by a busy slot is shared by copying its cache cells (`llama_memory_seq_cp`).

LoRA adapters belong to the llama.cpp context, not to a sequence, so sequences on different
adapter sets cannot share a `llama_decode`: each step decodes one batch per adapter set in use
(every group advances every step, none starves), starting with the set already applied, so one
adapter alone costs no switch. A slot's cache is reused only by a request on the same adapter set.

Images (a vision model loaded with its mmproj, `vision.py`): each `<|image_pad|>` of a prompt
stands for one image, expanded into that image's LLM tokens. A slot's cache is a list of keys,
a token id per text token and ``(image sha256, i)`` per image token, so prefixes are compared by
image content, never by placeholder ids: two different images at the same place share nothing.
An image is reused whole or not at all. Text tokens of every slot share one `llama_decode` per
step; an image's embeddings then go in their own decode (one image per step and adapter set), on
this thread. Positions are kept per cache entry apart from cell counts: with M-RoPE an image's
tokens all sit at its first position and the text after it continues `n_pos` (its grid size)
further on, not `n_tokens`.
"""

from __future__ import annotations

import ctypes
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from typing import Any, TypeVar, cast

import llama_cpp as C

from qwenkit.engines.base import (
    Adapters,
    Chunk,
    EngineStats,
    FinishReason,
    QueueFull,
    Request,
    TokenLogprob,
    check_request,
)
from qwenkit.engines.llamacpp.model import AdapterHandle, LlamaModel
from qwenkit.engines.llamacpp.sampler import SamplerChain, token_logprob
from qwenkit.engines.llamacpp.vision import PreparedImage, VisionTower
from qwenkit.engines.output import RequestOutput
from qwenkit.errors import BadRequest, QwenkitError

T = TypeVar("T")

#: A cache entry: a text token id, or (image sha256, index) for one of an image's LLM tokens.
Key = int | tuple[str, int]

log = logging.getLogger("qwenkit.scheduler")


# Prompt tokens per step while a prompt is scored (`echo` with logprobs): each keeps a logits row,
# and one slot at a time scores, so the output buffer holds n_parallel + this many rows.
SCORED_CHUNK = 16


class _Slot:
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


def _common_prefix(a: Sequence[Key], b: Sequence[Key]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


def _shared(slot: _Slot, prompt: Sequence[Key], adapters: Adapters) -> int:
    """Prompt tokens `slot`'s cache holds for `prompt` on `adapters` (none across adapter sets)."""
    return _common_prefix(slot.cached, prompt) if slot.adapters == adapters else 0


def _slot_for(free: list[_Slot], running: set[int], prompt: Sequence[Key], adapters: Adapters = ()) -> _Slot:
    """The free slot to run `prompt` in (on `adapters`), given the sequence ids `running` already.

    First, keep the running sequences contiguous: llama.cpp decodes sequences in separate KV
    streams together only when their ids are consecutive, so every gap costs one more pass
    through the model per step (4 sequences in slots 0,5,6,7 take 1.6x as long as in 0-3).
    A prefix held in another slot is copied in by `_start`, so this costs no recomputation.
    Then overwrite the least cache: a slot continuing this conversation, or an empty one, loses
    nothing, so one user's request never evicts another's conversation for the sake of a few
    shared template tokens. Last, the longest shared prefix (no copy), the slot used longest ago.
    """

    def cost(slot: _Slot) -> tuple[int, int, int, float]:
        shared = _shared(slot, prompt, adapters)
        return _runs(running | {slot.seq_id}), len(slot.cached) - shared, -shared, slot.last_used

    return min(free, key=cost)


def _reusable(keys: Sequence[Key], shared: int) -> int:
    """How many of `shared` matching entries to keep: at least one key left to decode (for
    logits), and never part of an image (back to its first token)."""
    n = min(shared, len(keys) - 1)
    head = keys[n]
    return n - head[1] if isinstance(head, tuple) else n


def _text_run(feed: Sequence[Key], limit: int) -> int:
    """How many text tokens `feed` starts with, up to `limit`."""
    for i in range(min(limit, len(feed))):
        if isinstance(feed[i], tuple):
            return i
    return min(limit, len(feed))


def _runs(seq_ids: set[int]) -> int:
    """How many runs of consecutive ids `seq_ids` has (each is one llama.cpp ubatch)."""
    return sum(1 for i in seq_ids if i - 1 not in seq_ids)


def context_params(*, n_ctx: int, n_parallel: int, n_batch: int, n_threads: int) -> C.llama_context_params:
    """The llama.cpp context the scheduler runs: `n_ctx` tokens per slot, one KV stream per slot."""
    params: C.llama_context_params = C.llama_context_default_params()
    params.n_ctx = n_ctx * n_parallel
    params.n_batch = max(n_batch, n_parallel)
    params.n_ubatch = params.n_batch
    params.n_seq_max = n_parallel
    # Each step samples one logits row per slot, plus the rows of one prompt being scored:
    # reserving outputs for a whole batch (llama.cpp's default) would hold n_batch x n_vocab
    # floats, about 300 MiB for Qwen, that are never written.
    params.n_outputs_max = n_parallel + SCORED_CHUNK
    params.n_threads = n_threads
    params.n_threads_batch = n_threads
    # One KV stream per slot (as llama-server): a sequence attends only over its own cells,
    # not over the caches idle slots keep for prefix reuse.
    params.kv_unified = False
    params.no_perf = True
    return params


class Scheduler:
    """Runs the step loop on a background thread; `submit` from any thread."""

    def __init__(
        self,
        model: LlamaModel,
        *,
        n_ctx: int,
        n_parallel: int = 1,
        n_batch: int = 512,
        n_threads: int,
        max_waiting: int = 64,
        vision: VisionTower | None = None,
    ) -> None:
        self.model = model
        self.vision = vision
        self.image_pad = _image_pad(model) if vision is not None else None
        self.n_ctx = n_ctx
        self.n_batch = max(n_batch, n_parallel)
        self.max_waiting = max_waiting
        params = context_params(n_ctx=n_ctx, n_parallel=n_parallel, n_batch=n_batch, n_threads=n_threads)
        self.ctx = C.llama_init_from_model(model.ptr, params)
        if not self.ctx:
            raise QwenkitError(f"llama.cpp could not create a context of {params.n_ctx} tokens (out of memory?)")
        self.mem = C.llama_get_memory(self.ctx)
        self.batch = C.llama_batch_init(self.n_batch, 0, 1)
        self.slots = [_Slot(i) for i in range(n_parallel)]
        self.eog_ids = model.eog_ids()
        self._waiting: deque[Request] = deque()
        self._cv = threading.Condition()
        self._closed = False
        self._prefix_hit_tokens = 0
        self._prompt_tokens = 0
        self._adapters: dict[str, AdapterHandle] = {}
        self._applied: Adapters = ()
        self._calls: deque[tuple[Callable[[], Any], Future[Any]]] = deque()  # run on the scheduler thread
        self._thread = threading.Thread(target=self._loop, name="qwenkit-scheduler", daemon=True)
        self._thread.start()

    # ----- public, any thread -----------------------------------------------------------

    def add_adapter(self, name: str, adapter: AdapterHandle) -> None:
        """Make a loaded LoRA adapter available to requests under `name`."""
        with self._cv:
            if name in self._adapters:
                raise QwenkitError(f"a LoRA adapter named {name!r} is already loaded")
            self._adapters[name] = adapter

    def adapter_names(self) -> list[str]:
        with self._cv:
            return list(self._adapters)

    def call(self, fn: Callable[[], T]) -> T:
        """`fn()` run on the scheduler thread between decode steps (the thread that owns the
        context: llama.cpp calls such as `llama_adapter_lora_init` then never race a decode)."""
        future: Future[T] = Future()
        with self._cv:
            if self._closed:
                raise QwenkitError("the engine is closed")
            self._calls.append((fn, future))
            self._cv.notify()
        return future.result()

    def submit(self, request: Request) -> Request:
        check_request(
            request,
            n_ctx=self.n_ctx,
            n_vocab=self.model.n_vocab,
            adapters=self.adapter_names(),
            image_pad=self.image_pad,
        )
        if request.images:
            if request.prompt[-1] == self.image_pad:
                raise BadRequest("the prompt must not end with an image")
            if request.params.prompt_logprobs is not None:
                raise BadRequest("prompt logprobs are not available for prompts with images")
            assert self.vision is not None  # check_request refused images otherwise
            images = [self.vision.prepare(image) for image in request.images]  # BadRequest if undecodable
            expanded = len(request.prompt) + sum(image.n_tokens - 1 for image in images)
            if expanded >= self.n_ctx:
                raise BadRequest(
                    f"the prompt with its images is {expanded} tokens; "
                    f"this model was loaded with a context of {self.n_ctx} tokens"
                )
        if request.n > len(self.slots):
            raise QwenkitError(f"n={request.n} needs as many parallel slots; this engine has {len(self.slots)}")
        with self._cv:
            if self._closed:
                raise QwenkitError("the engine is closed")
            if len(self._waiting) >= self.max_waiting and all(s.busy for s in self.slots):
                raise QueueFull(f"server busy: {len(self._waiting)} requests already waiting")
            self._waiting.append(request)
            self._cv.notify()
        return request

    def stats(self) -> EngineStats:
        with self._cv:
            running = sum(s.busy for s in self.slots)
            waiting = len(self._waiting)
        used = sum(len(s.cached) for s in self.slots)  # upper bound: shared cells count per sequence
        return EngineStats(
            running=running,
            waiting=waiting,
            kv_used_cells=min(used, self.n_ctx * len(self.slots)),
            kv_total_cells=self.n_ctx * len(self.slots),
            prefix_hit_tokens=self._prefix_hit_tokens,
            prompt_tokens=self._prompt_tokens,
        )

    def close(self) -> None:
        with self._cv:
            self._closed = True
            self._cv.notify()
        self._thread.join(timeout=30)
        C.llama_batch_free(self.batch)
        for slot in self.slots:
            if slot.sampler:
                slot.sampler.close()
        C.llama_free(self.ctx)
        self.ctx = None

    # ----- scheduler thread -------------------------------------------------------------

    def _loop(self) -> None:
        while True:
            with self._cv:
                while (
                    not self._closed and not self._waiting and not self._calls and not any(s.busy for s in self.slots)
                ):
                    self._cv.wait()
                if self._closed:
                    break
                calls, self._calls = self._calls, deque()
                admitted = self._admit_locked()
            for fn, future in calls:
                try:
                    future.set_result(fn())
                except BaseException as exc:  # the caller's error, raised in the caller's thread
                    future.set_exception(exc)
            for slot, request in admitted:
                self._start(slot, request)
            try:
                self._step()
            except Exception as exc:  # a broken step must not kill the thread: fail the requests
                log.exception("decode step failed")
                for slot in self.slots:
                    if slot.busy:
                        self._finish(slot, "abort", error=f"decode failed: {exc}")
                        self._forget(slot)
        for slot in self.slots:
            if slot.busy:
                self._finish(slot, "abort", error="the engine is shutting down")
        for request in self._waiting:
            request.emit(Chunk("", finish_reason="abort", error="the engine is shutting down"))
        for _, future in self._calls:
            future.set_exception(QwenkitError("the engine is closed"))

    def _admit_locked(self) -> list[tuple[_Slot, Request]]:
        admitted = []
        running = {s.seq_id for s in self.slots if s.busy}
        while self._waiting:
            free = [s for s in self.slots if s.seq_id not in running]
            if not free:
                break
            request, *followers = self._waiting.popleft().choices()
            if request.cancelled:
                for choice in (request, *followers):
                    choice.emit(Chunk("", finish_reason="abort"))
                continue
            slot = _slot_for(free, running, self._known_keys(request), request.adapters)
            slot.followers = followers
            running.add(slot.seq_id)
            admitted.append((slot, request))
        return admitted

    def _admit_followers(self, slot: _Slot) -> None:
        """Queue the other choices first, now that `slot` holds the prompt they will copy."""
        if slot.followers:
            with self._cv:
                self._waiting.extendleft(reversed(slot.followers))
            slot.followers = []

    def _start(self, slot: _Slot, request: Request) -> None:
        try:  # prepared at submit: cached unless evicted since
            images = [self.vision.prepare(image) for image in request.images] if self.vision else []
        except QwenkitError as exc:
            for choice in (request, *slot.followers):
                choice.emit(Chunk("", finish_reason="abort", error=str(exc)))
            slot.followers = []
            return
        keys = self._keys(request.prompt, images)
        # Scoring the prompt needs its logits at every position: nothing is reused then. Only the
        # first choice scores it; the others copy the cache it leaves.
        scored = request.params.prompt_logprobs is not None and request.index == 0
        reuse = 0 if scored else _reusable(keys, _shared(slot, keys, request.adapters))
        donor = max(
            (s for s in self.slots if s is not slot),
            key=lambda s: _shared(s, keys, request.adapters),
            default=None,
        )
        if donor is not None and not scored:
            shared = _reusable(keys, _shared(donor, keys, request.adapters))
            if shared > reuse:  # copy the donor's stream whole (across streams only whole copies
                C.llama_memory_seq_cp(self.mem, donor.seq_id, slot.seq_id, -1, -1)  # work), trim below
                slot.cached, slot.positions = donor.cached[:shared], donor.positions[:shared]
                slot.end_pos = donor.position(shared)
                reuse = shared
        C.llama_memory_seq_rm(self.mem, slot.seq_id, slot.position(reuse), -1)
        slot.keep(reuse)
        slot.adapters = request.adapters
        self._prefix_hit_tokens += reuse
        self._prompt_tokens += len(keys)
        try:
            slot.sampler = SamplerChain(self.model.vocab, self.model.n_vocab, request.params)
        except QwenkitError as exc:
            request.emit(Chunk("", finish_reason="abort", error=str(exc)))
            return
        slot.request = request
        slot.feed = keys[reuse:]
        slot.images = {image.sha256: image for image in images}
        slot.out = RequestOutput(
            request.emit,
            request.params,
            request.controller,
            piece=self.model.piece,
            end_ids=self.eog_ids,
            n_ctx=self.n_ctx,
            on_finish=lambda: self._release(slot),
        )
        slot.out.cached_prompt_tokens = reuse
        slot.out.prompt_tokens = len(keys)
        slot.prompt_logprobs = [None] if scored else None
        slot.top_logprobs = request.params.logprobs

    def _known_keys(self, request: Request) -> Sequence[Key]:
        """The request's cache keys as far as they are known before its images are prepared
        (to pick its slot): up to the first image not prepared yet."""
        if not request.images or self.vision is None:
            return request.prompt
        known = [self.vision.known(image.sha256) for image in request.images]
        n = next((i for i, image in enumerate(known) if image is None), len(known))
        cut = len(request.prompt)
        if n < len(known):  # stop at the first image slot whose size is unknown
            cut = [i for i, token in enumerate(request.prompt) if token == self.image_pad][n]
        return self._keys(request.prompt[:cut], [image for image in known[:n] if image is not None])

    def _keys(self, prompt: list[int], images: list[PreparedImage]) -> list[Key]:
        """`prompt` with each image_pad expanded into its image's keys (the prompt as the model sees it)."""
        if not images:
            return list(prompt)
        keys: list[Key] = []
        pending = iter(images)
        for token in prompt:
            if token == self.image_pad:
                image = next(pending)
                keys.extend((image.sha256, i) for i in range(image.n_tokens))
            else:
                keys.append(token)
        return keys

    def _step(self) -> None:
        for slot in self.slots:
            if slot.request is not None and slot.request.cancelled:
                self._finish(slot, "abort")
        groups: dict[Adapters, list[_Slot]] = {}
        for slot in self.slots:
            if slot.request is not None and slot.feed:
                groups.setdefault(slot.request.adapters, []).append(slot)
        # the adapter set already applied first: one set alone never switches
        for adapters in sorted(groups, key=lambda a: (a != self._applied, a)):
            self._apply(adapters)
            self._decode(groups[adapters])

    def _apply(self, adapters: Adapters) -> None:
        """Put `adapters` on the context (a no-op for the set already there)."""
        if adapters == self._applied:
            return
        n = len(adapters)
        handles = (C.llama_adapter_lora_p_ctypes * n)(*[self._adapters[name] for name, _ in adapters]) if n else None
        scales = (ctypes.c_float * n)(*(scale for _, scale in adapters)) if n else None
        rc = C.llama_set_adapters_lora(self.ctx, handles, n, scales)
        if rc != 0:
            raise QwenkitError(f"llama_set_adapters_lora returned {rc}")
        self._applied = adapters

    def _decode(self, active: list[_Slot]) -> None:
        """One `llama_decode` of the text of `active` (all on the applied adapter set), sampling,
        then the next image of one of them."""
        # Decoding slots (one token) first so a long prompt never starves running streams.
        active.sort(key=lambda s: len(s.feed))
        batch, n, budget = self.batch, 0, self.n_batch
        taken: list[tuple[_Slot, int, int | None, int]] = []  # slot, tokens taken, logits row, first row
        scored = False  # one prompt scored per step: the output buffer has room for one
        for slot in active:
            if n >= budget:
                break
            take = _text_run(slot.feed, budget - n)
            scoring = slot.prompt_logprobs is not None
            if scoring:  # every row's logits are kept: bound the output buffer
                if scored:
                    continue
                scored = True
                take = min(take, SCORED_CHUNK)
            if take <= 0:
                continue
            pos0 = slot.end_pos
            for i in range(take):
                batch.token[n + i] = cast(int, slot.feed[i])
                batch.pos[n + i] = pos0 + i
                batch.n_seq_id[n + i] = 1
                batch.seq_id[n + i][0] = slot.seq_id
                batch.logits[n + i] = scoring
            row = None
            if take == len(slot.feed):
                row = n + take - 1
                batch.logits[row] = True
            taken.append((slot, take, row, n))
            n += take
        if n:
            batch.n_tokens = n
            rc = C.llama_decode(self.ctx, batch)
            if rc != 0:
                raise QwenkitError(f"llama_decode returned {rc}")
        now = time.monotonic()
        for slot, take, row, first in taken:
            if slot.prompt_logprobs is not None:
                self._score_prompt(slot, take, first)
            slot.extend_text(cast(list[int], slot.feed[:take]))
            del slot.feed[:take]
            slot.last_used = now
            if row is not None:
                self._on_token(slot, row)
        waiting = next((s for s in active if s.busy and s.feed and isinstance(s.feed[0], tuple)), None)
        if waiting is not None:
            self._decode_image(waiting)

    def _decode_image(self, slot: _Slot) -> None:
        """Decode the image `slot`'s feed starts with (encoding it unless cached), in its own batch."""
        assert self.vision is not None
        head = slot.feed[0]
        assert isinstance(head, tuple)
        image = slot.images[head[0]]
        try:
            end_pos = self.vision.decode(self.ctx, image, slot.end_pos, slot.seq_id, self.n_batch)
        except QwenkitError as exc:
            self._finish(slot, "abort", error=str(exc))
            self._forget(slot)
            return
        slot.extend_image(image, end_pos)
        del slot.feed[: image.n_tokens]
        slot.last_used = time.monotonic()

    def _score_prompt(self, slot: _Slot, take: int, first: int) -> None:
        """Logprobs of the prompt tokens that follow this chunk's rows; handed on once complete."""
        request, scored, out = slot.request, slot.prompt_logprobs, slot.out
        assert (
            request is not None
            and scored is not None
            and out is not None
            and request.params.prompt_logprobs is not None
        )
        prompt, top = request.prompt, request.params.prompt_logprobs
        pos0 = len(slot.cached)  # prompts with images are not scored: entries are tokens here
        for i in range(take):
            if pos0 + i + 1 < len(prompt):
                scored.append(token_logprob(self.ctx, first + i, self.model.n_vocab, prompt[pos0 + i + 1], top))
        if len(scored) == len(prompt):
            out.prompt_logprobs, slot.prompt_logprobs = scored, None

    def _on_token(self, slot: _Slot, row: int) -> None:
        out, sampler = slot.running()
        token = sampler.sample(self.ctx, row)
        top = slot.top_logprobs
        logprob = None if top is None else token_logprob(self.ctx, row, self.model.n_vocab, token, top)
        self._admit_followers(slot)
        feed = out.on_token(token, len(slot.cached), logprob)
        for forced in feed[1:]:
            sampler.accept(forced)
        slot.feed = list[Key](feed)

    def _finish(self, slot: _Slot, reason: FinishReason, *, error: str | None = None) -> None:
        slot.running()[0].finish(reason, error=error)

    def _release(self, slot: _Slot) -> None:
        self._admit_followers(slot)  # a leader that ends before its prefill: they start on their own
        slot.request = None
        slot.feed = []
        slot.images = {}
        slot.prompt_logprobs = None
        if slot.sampler:
            slot.sampler.close()
            slot.sampler = None

    def _forget(self, slot: _Slot) -> None:
        """Drop a slot's cache (after a failed step its contents are unknown)."""
        C.llama_memory_seq_rm(self.mem, slot.seq_id, -1, -1)
        slot.cached, slot.positions, slot.end_pos = [], [], 0


def _image_pad(model: LlamaModel) -> int:
    """The model's `<|image_pad|>` token id, from its own vocabulary."""
    ids = model.tokenize("<|image_pad|>", special=True)
    if len(ids) != 1:
        raise QwenkitError("this model's vocabulary has no <|image_pad|> token: it is not a Qwen-VL model")
    return ids[0]
