"""What every engine implementation shares: `submit` building a checked-in `Request`, `generate`
over `submit`, (for engines tokenizing with an `hf_vocab.Vocab`) the token delegation, and the
step loop's thread (`StepLoop`: its queue, its stats, its shutdown).

Subclassing is a convenience: the contract stays the structural `base.Engine` Protocol."""

from __future__ import annotations

import queue
import threading
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from typing import ClassVar, Self

from qwenkit.engines.base import (
    Adapters,
    Chunk,
    EngineStats,
    ImageInput,
    Request,
    RequestHandle,
    SamplingParams,
    StepController,
)
from qwenkit.engines.hf_vocab import Vocab


class EngineBase(ABC):
    """`submit` and `generate` as every engine runs them; a subclass queues in `_enqueue`."""

    def submit(
        self,
        prompt: Sequence[int],
        params: SamplingParams,
        emit: Callable[[Chunk], None],
        controller: StepController | None = None,
        adapters: Adapters = (),
        *,
        n: int = 1,
        images: Sequence[ImageInput] = (),
    ) -> RequestHandle:
        """Queue a request whose chunks are passed to `emit` on the engine's thread."""
        return self._enqueue(Request(list(prompt), params, emit, controller, tuple(adapters), tuple(images), n=n))

    @abstractmethod
    def _enqueue(self, request: Request) -> RequestHandle:
        """Check `request` (raising BadRequest/QwenkitError before queueing) and queue it."""

    def generate(
        self,
        prompt: Sequence[int],
        params: SamplingParams,
        controller: StepController | None = None,
        adapters: Adapters = (),
        *,
        images: Sequence[ImageInput] = (),
    ) -> Iterator[Chunk]:
        """The chunks of `submit` as an iterator; closing it cancels the request."""
        chunks: queue.Queue[Chunk] = queue.Queue()
        handle = self.submit(prompt, params, chunks.put, controller, adapters, images=images)
        try:
            while True:
                chunk = chunks.get()
                yield chunk
                if chunk.finish_reason is not None:
                    return
        finally:
            handle.cancel()

    @abstractmethod
    def close(self) -> None: ...

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class VocabEngine(EngineBase):
    """An engine that tokenizes with an `hf_vocab.Vocab` and knows its end-of-generation ids."""

    vocab: Vocab
    _eos: set[int]

    def tokenize(self, text: str, *, special: bool = True) -> list[int]:
        return self.vocab.tokenize(text, special=special)

    def detokenize(self, ids: Sequence[int]) -> str:
        return self.vocab.detokenize(ids)

    def token_bytes(self, token: int) -> bytes:
        return self.vocab.piece(token, special=True)

    def eos_token_ids(self) -> set[int]:
        return set(self._eos)


class StepLoop(ABC):
    """An engine's step loop on a thread of its own: requests wait in `_waiting`, guarded (with
    everything the loop and the callers share) by `_cv`; `close` ends the loop and joins it."""

    #: how long `close` waits for the loop to finish its step and abort what is left
    join_timeout_s: ClassVar[float] = 60

    def __init__(self) -> None:
        self._waiting: deque[Request] = deque()
        self._cv = threading.Condition()
        self._closed = False
        self._prefix_hit_tokens = 0  # prompt tokens taken from a prefix cache, in all
        self._prompt_tokens = 0  # prompt tokens admitted, in all
        self._drafted_tokens = 0  # speculative draft tokens verified, in all
        self._accepted_draft_tokens = 0  # of which the sampler agreed with
        self.prefix_cache_off: str | None = None  # why a prefix cache asked for is off (EngineStats)

    def _start_thread(self, name: str) -> None:
        """Start the loop's thread (once the subclass is ready for it)."""
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    @abstractmethod
    def _loop(self) -> None:
        """The step loop; it returns once `_closed` is set, every request left aborted."""

    @abstractmethod
    def _occupancy(self) -> tuple[int, int, int]:
        """Running requests, KV cells in use and KV cells in all (called holding `_cv`)."""

    def stats(self) -> EngineStats:
        with self._cv:
            running, used, total = self._occupancy()
            return EngineStats(
                running=running,
                waiting=len(self._waiting),
                kv_used_cells=used,
                kv_total_cells=total,
                prefix_hit_tokens=self._prefix_hit_tokens,
                prompt_tokens=self._prompt_tokens,
                drafted_tokens=self._drafted_tokens,
                accepted_draft_tokens=self._accepted_draft_tokens,
                prefix_cache_off=self.prefix_cache_off,
            )

    def close(self) -> None:
        with self._cv:
            self._closed = True
            self._cv.notify()
        self._thread.join(timeout=self.join_timeout_s)
