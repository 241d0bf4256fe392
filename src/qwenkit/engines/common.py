"""What every engine implementation shares: `submit` building a checked-in `Request`, `generate`
over `submit`, and (for engines tokenizing with an `hf_vocab.Vocab`) the token delegation.

Subclassing is a convenience: the contract stays the structural `base.Engine` Protocol."""

from __future__ import annotations

import queue
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from typing import Self

from qwenkit.engines.base import Adapters, Chunk, ImageInput, Request, RequestHandle, SamplingParams, StepController
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
