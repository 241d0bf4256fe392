"""Async bridge: one prepared turn through the engine's thread, as an async stream of deltas."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

from qwenkit.engines.base import Chunk
from qwenkit.model import Model, PreparedTurn
from qwenkit.results import ChatDelta
from qwenkit.serve.metrics import Metrics


def run_turn(model: Model, turn: PreparedTurn, metrics: Metrics, *, live: bool = True) -> TurnStream:
    """Submit `turn` now and return an async iterator of its deltas.

    `live=False` (nobody streams the reply) hands the chunks over once, at the end, instead of
    waking the event loop for every token: on few cores that Python work would pre-empt the
    engine's compute threads.

    Submitting happens here, not on the first iteration, so a full queue (`QueueFull`) or a
    refused prompt raises before a streamed response has sent its 200 headers. Leaving the
    iteration early (a client gone), or dropping the stream unread, cancels the request.
    """
    return TurnStream(model, turn, metrics, live=live)


class TurnStream:
    def __init__(self, model: Model, turn: PreparedTurn, metrics: Metrics, *, live: bool = True) -> None:
        self._done = True  # nothing to cancel until the engine has accepted the request
        loop = asyncio.get_running_loop()
        self._chunks: asyncio.Queue[list[tuple[float, Chunk]]] = asyncio.Queue()
        chunks = self._chunks
        held: list[tuple[float, Chunk]] = []  # touched by the engine thread only

        def emit(chunk: Chunk) -> None:
            held.append((time.perf_counter(), chunk))
            if not live and chunk.finish_reason is None:
                return
            batch = held[:]
            held.clear()
            try:
                loop.call_soon_threadsafe(chunks.put_nowait, batch)
            except RuntimeError:  # the event loop is gone (shutdown): nobody is listening
                pass

        self._model, self._turn, self._metrics = model, turn, metrics
        self._handle = model.engine.submit(turn.prompt, turn.params, emit, model.controller(turn), turn.adapters)
        self._started = time.perf_counter()
        self._done = False

    def __aiter__(self) -> AsyncIterator[ChatDelta]:
        return self._deltas()

    async def _deltas(self) -> AsyncIterator[ChatDelta]:
        metrics, turn = self._metrics, self._turn
        decoder = self._model.decoder(turn)
        started = last = self._started
        generated = 0
        try:
            while True:
                for at, chunk in await self._chunks.get():
                    if chunk.token_ids:
                        if generated == 0:
                            metrics.ttft.observe(at - started)
                        else:
                            metrics.itl.observe((at - last) / len(chunk.token_ids))
                        last = at
                        generated += len(chunk.token_ids)
                    delta = decoder.feed(chunk)
                    if chunk.finish_reason is not None:
                        self._done = True
                        metrics.prompt_tokens.inc(len(turn.prompt))
                        metrics.generation_tokens.inc(generated)
                        metrics.e2e.observe(time.perf_counter() - started)
                        if chunk.error:
                            raise EngineFailure(chunk.error)
                    yield delta
                    if self._done:
                        return
        finally:
            self.cancel()

    def cancel(self) -> None:
        """Cancel the request unless it has finished (idempotent)."""
        if not self._done:
            self._done = True
            self._handle.cancel()
            self._metrics.cancelled.inc()

    def __del__(self) -> None:  # a stream dropped before it was iterated (client gone early)
        if not getattr(self, "_done", True):
            self.cancel()


class EngineFailure(Exception):
    """The engine aborted a request (its message is safe to show)."""
