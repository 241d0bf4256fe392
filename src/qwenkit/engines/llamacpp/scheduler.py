"""Continuous batching on llama.cpp: every live sequence advances in one `llama_decode` per step.

Each request holds a slot (one llama.cpp sequence id). A step gathers one token from every
decoding slot plus chunks of pending prompt (chunked prefill), decodes them together, then
samples each slot from its own row of logits with its own sampler chain. Requests join and
leave between steps. A finished slot keeps its KV cache for the next request that shares its prefix.

LoRA adapters belong to the llama.cpp context, not to a sequence, so sequences on different
adapter sets cannot share a `llama_decode`: each step decodes one batch per adapter set in use
(every group advances every step, none starves), starting with the set already applied, so one
adapter alone costs no switch. A slot's cache is reused only by a request on the same adapter set.

Speculation (prompt lookup, `engines/speculation.py`): a decoding slot whose last tokens occurred
earlier in its context appends the tokens that followed them there to its one token, with a logits
row for each; its sampler then samples every row in order exactly as plain decoding would, the
draft is kept while the samples agree with it, and the cells of the rest are removed from its KV
stream. Speculating and plain slots share the step; the decoding slots share one slot's worth of
drafted positions per step (`draft_max`), so prompt chunks keep their room and a busy batch does
not spend compute on guesses.

Slots and their prefix cache: `slots.py`; images (vision models): `image_step.py`.
"""

from __future__ import annotations

import ctypes
import logging
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, TypeVar, cast

import llama_cpp as C

from qwenkit.engines.base import (
    Adapters,
    Chunk,
    FinishReason,
    QueueFull,
    Request,
    check_request,
)
from qwenkit.engines.common import StepLoop
from qwenkit.engines.llamacpp.checkpoints import marks, nearest, restore, save
from qwenkit.engines.llamacpp.image_step import ImageStep
from qwenkit.engines.llamacpp.model import AdapterHandle, LlamaModel
from qwenkit.engines.llamacpp.sampler import SamplerChain, token_logprob
from qwenkit.engines.llamacpp.slots import (
    Key,
    Slot,
    expand,
    reachable,
    reusable,
    shared_prefix,
    slot_for,
    text_run,
)
from qwenkit.engines.llamacpp.vision import VisionTower
from qwenkit.engines.output import RequestOutput
from qwenkit.engines.speculation import DraftLength, NgramDrafter
from qwenkit.errors import QwenkitError

T = TypeVar("T")

log = logging.getLogger("qwenkit.scheduler")


# Prompt tokens per step while a prompt is scored (`echo` with logprobs): each keeps a logits row,
# and one slot at a time scores, so the output buffer holds n_parallel + this many rows.
SCORED_CHUNK = 16


def max_drafted(*, n_parallel: int, n_batch: int, draft_max: int) -> int:
    """Drafted positions one step verifies at most: one slot's full draft, within half a batch."""
    return min(draft_max, max(n_batch, n_parallel) // 2)


def context_params(
    *, n_ctx: int, n_parallel: int, n_batch: int, n_threads: int, draft_max: int = 0
) -> C.llama_context_params:
    """The llama.cpp context the scheduler runs: `n_ctx` tokens per slot, one KV stream per slot."""
    params: C.llama_context_params = C.llama_context_default_params()
    params.n_ctx = n_ctx * n_parallel
    params.n_batch = max(n_batch, n_parallel)
    params.n_ubatch = params.n_batch
    params.n_seq_max = n_parallel
    # Each step samples one logits row per slot, plus the rows of one prompt being scored:
    # reserving outputs for a whole batch (llama.cpp's default) would hold n_batch x n_vocab
    # floats, about 300 MiB for Qwen, that are never written. Drafts add a row per drafted position.
    params.n_outputs_max = (
        n_parallel + SCORED_CHUNK + max_drafted(n_parallel=n_parallel, n_batch=n_batch, draft_max=draft_max)
    )
    params.n_threads = n_threads
    params.n_threads_batch = n_threads
    # One KV stream per slot (as llama-server): a sequence attends only over its own cells,
    # not over the caches idle slots keep for prefix reuse.
    params.kv_unified = False
    params.no_perf = True
    return params


class Scheduler(StepLoop):
    """Runs the step loop on a background thread; `submit` from any thread."""

    join_timeout_s = 30

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
        speculative: bool = False,
        draft_max: int = 0,
        turn_start: tuple[int, ...] = (),
        max_checkpoints: int = 8,
    ) -> None:
        super().__init__()
        self.model = model
        # recurrent layers (Qwen3.5, Qwen3-Next): a sequence is cut back only to a checkpoint
        self.recurrent = bool(C.llama_model_is_recurrent(model.ptr) or C.llama_model_is_hybrid(model.ptr))
        self.turn_start = turn_start
        self.max_checkpoints = max_checkpoints
        self.images = ImageStep(vision, model, n_ctx=n_ctx) if vision is not None else None
        self.image_pad = self.images.image_pad if self.images is not None else None
        self.n_ctx = n_ctx
        self.n_batch = max(n_batch, n_parallel)
        self.max_waiting = max_waiting
        self.speculative = speculative  # the default for requests that do not say
        self.draft_max = draft_max  # drafted tokens per slot and step at most (0: never speculate)
        self.max_drafted = max_drafted(n_parallel=n_parallel, n_batch=n_batch, draft_max=draft_max)
        params = context_params(
            n_ctx=n_ctx, n_parallel=n_parallel, n_batch=n_batch, n_threads=n_threads, draft_max=draft_max
        )
        self.ctx = C.llama_init_from_model(model.ptr, params)
        if not self.ctx:
            raise QwenkitError(f"llama.cpp could not create a context of {params.n_ctx} tokens (out of memory?)")
        self.mem = C.llama_get_memory(self.ctx)
        self.batch = C.llama_batch_init(self.n_batch, 0, 1)
        self.slots = [Slot(i) for i in range(n_parallel)]
        self.eog_ids = model.eog_ids()
        self._adapters: dict[str, AdapterHandle] = {}
        self._applied: Adapters = ()
        self._calls: deque[tuple[Callable[[], Any], Future[Any]]] = deque()  # run on the scheduler thread
        self._start_thread("qwenkit-scheduler")

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
            assert self.images is not None  # check_request refused images otherwise
            self.images.check(request)
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

    def _occupancy(self) -> tuple[int, int, int]:
        used = sum(len(s.cached) for s in self.slots)  # upper bound: shared cells count per sequence
        total = self.n_ctx * len(self.slots)
        return sum(s.busy for s in self.slots), min(used, total), total

    def close(self) -> None:
        super().close()
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

    def _admit_locked(self) -> list[tuple[Slot, Request]]:
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
            known = self.images.known_keys(request) if self.images is not None else request.prompt
            slot = slot_for(free, running, known, request.adapters)
            slot.followers = followers
            running.add(slot.seq_id)
            admitted.append((slot, request))
        return admitted

    def _admit_followers(self, slot: Slot) -> None:
        """Queue the other choices first, now that `slot` holds the prompt they will copy."""
        if slot.followers:
            with self._cv:
                self._waiting.extendleft(reversed(slot.followers))
            slot.followers = []

    def _start(self, slot: Slot, request: Request) -> None:
        try:  # prepared at submit: cached unless evicted since
            images = self.images.prepare(request) if self.images is not None else []
        except QwenkitError as exc:
            for choice in (request, *slot.followers):
                choice.emit(Chunk("", finish_reason="abort", error=str(exc)))
            slot.followers = []
            return
        keys = expand(request.prompt, images, self.image_pad)
        # Scoring the prompt needs its logits at every position: nothing is reused then. Only the
        # first choice scores it; the others copy the cache it leaves.
        scored = request.params.prompt_logprobs is not None and request.index == 0
        reuse, donor, donor_reuse = 0, None, 0
        if not scored:
            reuse = self._reachable(slot, keys, request.adapters)
            for other in self.slots:
                n = self._reachable(other, keys, request.adapters) if other is not slot else 0
                if n > max(reuse, donor_reuse):
                    donor, donor_reuse = other, n
        reuse = self._cut(slot, reuse, donor, donor_reuse)
        slot.marks = {m for m in marks(keys, self.turn_start) if m >= reuse} if self.recurrent and not scored else set()
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
        limit = self._draft_limit(request)
        # a cache with recurrent layers cannot drop a rejected guess: those models do not speculate
        speculates = limit > 0 and not images and not self.recurrent
        slot.drafter = NgramDrafter(request.prompt) if speculates else None
        slot.draft_length = DraftLength(limit) if slot.drafter is not None else None

    def _draft_limit(self, request: Request) -> int:
        """Tokens `request` may draft per step (0: it does not speculate)."""
        p = request.params
        on = self.speculative if p.speculative is None else p.speculative
        return min(self.draft_max, self.draft_max if p.draft_max is None else p.draft_max) if on else 0

    def _reachable(self, slot: Slot, keys: list[Key], adapters: Adapters) -> int:
        """How many of `keys` `slot`'s cache can give (a cache with recurrent layers only to a
        checkpoint or whole)."""
        return reachable(slot, reusable(keys, shared_prefix(slot, keys, adapters)), recurrent=self.recurrent)

    def _cut(self, slot: Slot, reuse: int, donor: Slot | None, donor_reuse: int) -> int:
        """Leave `slot` holding the first `reuse` entries of its cache, or the first `donor_reuse`
        of `donor`'s copied in (across KV streams only whole copies work: copy, then cut); the
        entries it holds. A cut the memory refuses empties the sequence: never a wrong state."""
        if donor is not None:
            C.llama_memory_seq_cp(self.mem, donor.seq_id, slot.seq_id, -1, -1)
            slot.cached, slot.positions, slot.end_pos = list(donor.cached), list(donor.positions), donor.end_pos
            slot.checkpoints = list(donor.checkpoints)
            reuse = donor_reuse
        if self.recurrent and 0 < reuse < len(slot.cached):  # back to a checkpoint, then drop cells after it
            checkpoint = nearest(slot.checkpoints, reuse)
            if checkpoint is None or checkpoint.n != reuse or not restore(self.ctx, slot.seq_id, checkpoint):
                reuse = 0
        if reuse == 0 or not C.llama_memory_seq_rm(self.mem, slot.seq_id, slot.position(reuse), -1):
            C.llama_memory_seq_rm(self.mem, slot.seq_id, -1, -1)
            reuse = 0
        slot.keep(reuse)
        return reuse

    def _checkpoint(self, slot: Slot) -> None:
        """Save `slot`'s recurrent state at its cache's end, the oldest checkpoint out when full."""
        here = len(slot.cached)
        slot.marks.discard(here)
        if any(c.n == here for c in slot.checkpoints):
            return
        if len(slot.checkpoints) >= self.max_checkpoints:
            slot.checkpoints.remove(min(slot.checkpoints, key=lambda c: c.n))
        slot.checkpoints.append(save(self.ctx, slot.seq_id, here))

    def _step(self) -> None:
        for slot in self.slots:
            if slot.request is not None and slot.request.cancelled:
                self._finish(slot, "abort")
        groups: dict[Adapters, list[Slot]] = {}
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

    def _decode(self, active: list[Slot]) -> None:
        """One `llama_decode` of the text of `active` (all on the applied adapter set), sampling,
        then the next image of one of them."""
        # Decoding slots (one token) first so a long prompt never starves running streams.
        active.sort(key=lambda s: len(s.feed))
        batch, n, budget = self.batch, 0, self.n_batch
        # One slot's worth of drafts per step, shared by the decoding slots: a batch of several
        # sequences already keeps a CPU busy, where every further verified position costs nearly a
        # whole token's compute and only the accepted ones pay it back.
        decoding = sum(1 for s in active if len(s.feed) == 1 and s.drafter is not None)
        share = max(1, self.draft_max // max(decoding, 1))
        drafts_left = self.max_drafted
        # slot, tokens taken, logits row, first row, draft
        taken: list[tuple[Slot, int, int | None, int, list[int]]] = []
        scored = False  # one prompt scored per step: the output buffer has room for one
        for slot in active:
            if n >= budget:
                break
            take = text_run(slot.feed, budget - n)
            if slot.marks:  # a checkpoint is saved between two decodes: end this chunk at the next mark
                here = len(slot.cached)
                if here in slot.marks:
                    self._checkpoint(slot)
                ahead = [m - here for m in slot.marks if m > here]
                take = min(take, *ahead) if ahead else take
            scoring = slot.prompt_logprobs is not None
            if scoring:  # every row's logits are kept: bound the output buffer
                if scored:
                    continue
                scored = True
                take = min(take, SCORED_CHUNK)
            if take <= 0:
                continue
            room = min(share, drafts_left, budget - n - 1)
            draft = self._draft(slot, room) if take == len(slot.feed) == 1 else []
            drafts_left -= len(draft)
            pos0 = slot.end_pos
            for i, token in enumerate([*cast(list[int], slot.feed[:take]), *draft]):
                batch.token[n + i] = token
                batch.pos[n + i] = pos0 + i
                batch.n_seq_id[n + i] = 1
                batch.seq_id[n + i][0] = slot.seq_id
                batch.logits[n + i] = scoring or bool(draft)
            row = None
            if take == len(slot.feed):
                row = n + take - 1
                batch.logits[row] = True
            taken.append((slot, take, row, n, draft))
            n += take + len(draft)
        if n:
            batch.n_tokens = n
            rc = C.llama_decode(self.ctx, batch)
            if rc != 0:
                raise QwenkitError(f"llama_decode returned {rc}")
        now = time.monotonic()
        for slot, take, row, first, draft in taken:
            if slot.prompt_logprobs is not None:
                self._score_prompt(slot, take, first)
            slot.extend_text(cast(list[int], slot.feed[:take]))
            del slot.feed[:take]
            slot.last_used = now
            if draft:
                assert row is not None
                self._verify(slot, row, draft)
            elif row is not None:
                self._on_token(slot, row)
        waiting = next((s for s in active if s.busy and s.feed and isinstance(s.feed[0], tuple)), None)
        if waiting is not None:
            self._decode_image(waiting)

    def _draft(self, slot: Slot, room: int) -> list[int]:
        """The tokens a decoding slot guesses follow its next one (none when it does not speculate,
        is scoring its prompt, or has no room: batch, `max_tokens`, context)."""
        if slot.drafter is None or slot.draft_length is None or slot.prompt_logprobs is not None:
            return []
        out = slot.running()[0]
        limit = min(
            room,
            slot.draft_length.next(),
            out.params.max_tokens - len(out.generated) - 1,
            self.n_ctx - slot.end_pos - 2,
        )
        return slot.drafter.draft(limit)

    def _verify(self, slot: Slot, row: int, draft: list[int]) -> None:
        """Sample the rows of a slot's next token and its draft in order, as plain decoding would,
        keeping each drafted cell while the sample before it equals it; the rest leave the cache."""
        out = slot.running()[0]
        out.drafted_tokens += len(draft)
        self._drafted_tokens += len(draft)
        kept = 0
        for i, guess in enumerate(draft):
            self._on_token(slot, row + i, guess)
            if slot.feed != [guess]:  # another token, the request ended, or tokens were forced
                break
            slot.extend_text([guess])  # its cell already holds what the next step would compute
            slot.feed = []
            kept += 1
        else:
            self._on_token(slot, row + len(draft))
        if kept < len(draft):
            C.llama_memory_seq_rm(self.mem, slot.seq_id, slot.end_pos, -1)
        if slot.draft_length is not None:  # gone when the request ended in this step
            slot.draft_length.record(len(draft), kept)

    def _decode_image(self, slot: Slot) -> None:
        assert self.images is not None
        try:
            self.images.decode(self.ctx, slot, self.n_batch)
        except QwenkitError as exc:
            self._finish(slot, "abort", error=str(exc))
            self._forget(slot)
            return
        slot.last_used = time.monotonic()

    def _score_prompt(self, slot: Slot, take: int, first: int) -> None:
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

    def _on_token(self, slot: Slot, row: int, guess: int | None = None) -> None:
        """Sample the slot's next token from `row` and hand it on; `guess` is the token drafted there."""
        out, sampler = slot.running()
        token = sampler.sample(self.ctx, row)
        if token == guess:  # counted before `on_token`, which may send the last chunk
            out.accepted_draft_tokens += 1
            self._accepted_draft_tokens += 1
        top = slot.top_logprobs
        logprob = None if top is None else token_logprob(self.ctx, row, self.model.n_vocab, token, top)
        self._admit_followers(slot)
        feed = out.on_token(token, len(slot.cached), logprob)
        for forced in feed[1:]:
            sampler.accept(forced)
        slot.feed = list[Key](feed)
        if slot.drafter is not None:
            slot.drafter.extend(feed)

    def _finish(self, slot: Slot, reason: FinishReason, *, error: str | None = None) -> None:
        slot.running()[0].finish(reason, error=error)

    def _release(self, slot: Slot) -> None:
        self._admit_followers(slot)  # a leader that ends before its prefill: they start on their own
        slot.request = None
        slot.feed = []
        slot.images = {}
        slot.prompt_logprobs = None
        slot.drafter = slot.draft_length = None
        slot.marks = set()
        if slot.sampler:
            slot.sampler.close()
            slot.sampler = None

    def _forget(self, slot: Slot) -> None:
        """Drop a slot's cache (after a failed step its contents are unknown)."""
        C.llama_memory_seq_rm(self.mem, slot.seq_id, -1, -1)
        slot.cached, slot.positions, slot.end_pos, slot.checkpoints = [], [], 0, []
