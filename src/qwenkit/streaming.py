"""Turns through `Engine.submit` for the Python API: async streams and batches.

The engine runs on its own thread and hands chunks to a callback; here they are moved onto an
asyncio queue (`loop.call_soon_threadsafe`), so awaiting a turn never blocks the event loop, or
onto one thread-safe queue for a batch, whose turns are all submitted at once so that the
engine decodes them together. Leaving a stream early, closing it or cancelling the task cancels
the engine request.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
from collections.abc import AsyncIterator, Sequence
from typing import Protocol

from qwenkit.engines.base import Chunk, Engine, RequestHandle, StepController
from qwenkit.results import ChatDelta, ChatResult
from qwenkit.turn import PreparedTurn, TurnDecoder


class TurnRunner(Protocol):
    """What running a turn needs of a model (`Model` is one): its engine, a decoder and a controller."""

    @property
    def engine(self) -> Engine: ...

    def decoder(self, turn: PreparedTurn) -> TurnDecoder: ...

    def controller(self, turn: PreparedTurn) -> StepController | None: ...


class AsyncTurn:
    """An async iterator of `ChatDelta` for one submitted turn (the last carries `result`).

    Submission happens on the first `__anext__` (inside the running loop), so errors such as a
    full queue or a refused prompt surface there. `aclose()` (or `async with`, or dropping the
    object) cancels the request if it has not finished.
    """

    def __init__(self, model: TurnRunner, turn: PreparedTurn) -> None:
        self._model, self._turn = model, turn
        self._live: tuple[asyncio.Queue[Chunk], TurnDecoder] | None = None  # once submitted
        self._handle: RequestHandle | None = None
        self._finished = False

    def __aiter__(self) -> AsyncTurn:
        return self

    async def __anext__(self) -> ChatDelta:
        if self._finished:
            raise StopAsyncIteration
        if self._live is None:
            self._live = self._submit()
        queue, decoder = self._live
        try:
            chunk = await queue.get()
        except BaseException:  # cancelled while waiting: the request goes too
            self.cancel()
            raise
        delta = decoder.feed(chunk)
        if chunk.finish_reason is not None:
            self._finished = True
        return delta

    def _submit(self) -> tuple[asyncio.Queue[Chunk], TurnDecoder]:
        loop = asyncio.get_running_loop()
        q: asyncio.Queue[Chunk] = asyncio.Queue()

        def emit(chunk: Chunk) -> None:  # on the engine thread
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is listening any more
                loop.call_soon_threadsafe(q.put_nowait, chunk)

        model, turn = self._model, self._turn
        decoder = model.decoder(turn)
        self._handle = model.engine.submit(
            turn.prompt, turn.params, emit, model.controller(turn), turn.adapters, images=turn.images
        )
        return q, decoder

    def cancel(self) -> None:
        if self._handle is not None and not self._finished:
            self._handle.cancel()
        self._finished = True

    async def aclose(self) -> None:
        self.cancel()

    async def __aenter__(self) -> AsyncTurn:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.cancel()

    def __del__(self) -> None:
        handle = getattr(self, "_handle", None)
        if handle is not None and not self._finished:
            handle.cancel()


async def collect(stream: AsyncIterator[ChatDelta]) -> ChatResult:
    """Drain a stream of deltas to its final result."""
    async for delta in stream:
        if delta.result is not None:
            return delta.result
    raise RuntimeError("the engine ended without a final chunk")  # engines always send one


def run_batch(model: TurnRunner, turns: Sequence[PreparedTurn]) -> list[ChatResult]:
    """Submit every turn at once, wait for all, return their results in order."""
    chunks: queue.Queue[tuple[int, Chunk]] = queue.Queue()
    decoders = [model.decoder(turn) for turn in turns]
    results: list[ChatResult | None] = [None] * len(turns)
    handles = []
    try:
        for i, turn in enumerate(turns):
            emit = lambda chunk, i=i: chunks.put((i, chunk))  # noqa: E731
            handles.append(
                model.engine.submit(
                    turn.prompt, turn.params, emit, model.controller(turn), turn.adapters, images=turn.images
                )
            )
        remaining = len(turns)
        while remaining:
            i, chunk = chunks.get()
            delta = decoders[i].feed(chunk)
            if delta.result is not None:
                results[i] = delta.result
                remaining -= 1
    finally:
        for i, handle in enumerate(handles):
            if results[i] is None:
                handle.cancel()
    return [r for r in results if r is not None]
