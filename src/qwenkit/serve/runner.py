"""Async bridge: one prepared turn through the engine's thread, as an async stream of deltas."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from collections.abc import AsyncIterator

from qwenkit.engines.base import Chunk, RequestHandle
from qwenkit.model import Model
from qwenkit.results import ChatDelta
from qwenkit.serve.metrics import Metrics
from qwenkit.turn import PreparedTurn


async def run_turn(model: Model, turn: PreparedTurn, metrics: Metrics, *, live: bool = True, n: int = 1) -> TurnStream:
    """Submit `turn` now and return an async iterator of its deltas (of `n` choices, by `index`;
    each choice's last delta carries its `result`).

    `live=False` (nobody streams the reply) hands the chunks over once, at the end, instead of
    waking the event loop for every token: on few cores that Python work would pre-empt the
    engine's compute threads.

    Submitting happens here, not on the first iteration, so a full queue (`QueueFull`) or a
    refused prompt raises before a streamed response has sent its 200 headers. Leaving the
    iteration early (a client gone), or dropping the stream unread, cancels the request.

    A turn with images is submitted from a worker thread: the engine preprocesses images in
    `submit` (decoding, the vision processor), which must not block the event loop.
    """
    stream = TurnStream(model, turn, metrics, live=live, n=n)
    await stream.submit()
    return stream


class TurnStream:
    def __init__(self, model: Model, turn: PreparedTurn, metrics: Metrics, *, live: bool = True, n: int = 1) -> None:
        self._done = True  # nothing to cancel until the engine has accepted the request
        loop = asyncio.get_running_loop()
        self._chunks: asyncio.Queue[list[tuple[float, Chunk]]] = asyncio.Queue()
        chunks = self._chunks
        held: list[tuple[float, Chunk]] = []  # touched by the engine thread only

        running = [n]  # choices not finished (engine thread)

        def emit(chunk: Chunk) -> None:
            held.append((time.perf_counter(), chunk))
            if chunk.finish_reason is not None:
                running[0] -= 1
            if not live and running[0]:
                return
            batch = held[:]
            held.clear()
            with contextlib.suppress(RuntimeError):  # the event loop is gone (shutdown): nobody is listening
                loop.call_soon_threadsafe(chunks.put_nowait, batch)

        self._model, self._turn, self._metrics, self._n = model, turn, metrics, n
        self._emit = emit
        self._started = time.perf_counter()

    async def submit(self) -> None:
        """Hand the turn to the engine (in a worker thread when it has images to preprocess)."""
        model, turn = self._model, self._turn
        submit = functools.partial(
            model.engine.submit,
            turn.prompt,
            turn.params,
            self._emit,
            model.controller(turn),
            turn.adapters,
            n=self._n,
            images=turn.images,
        )
        if not turn.images:
            self._handle = submit()
        else:
            pending = asyncio.ensure_future(asyncio.to_thread(submit))
            try:
                self._handle = await asyncio.shield(pending)
            except asyncio.CancelledError:  # the client went away: cancel the request once it is in
                pending.add_done_callback(_cancel_submitted)
                raise
        self._started = time.perf_counter()
        self._done = False

    def __aiter__(self) -> AsyncIterator[ChatDelta]:
        return self._deltas()

    async def _deltas(self) -> AsyncIterator[ChatDelta]:
        metrics, turn = self._metrics, self._turn
        decoders = [self._model.decoder(turn) for _ in range(self._n)]
        started = self._started
        last = [started] * self._n
        generated = [0] * self._n
        running = self._n
        try:
            while True:
                for at, chunk in await self._chunks.get():
                    i = chunk.index
                    if chunk.token_ids:
                        if generated[i] == 0:
                            metrics.ttft.observe(at - started)
                        else:
                            metrics.itl.observe((at - last[i]) / len(chunk.token_ids))
                        last[i] = at
                        generated[i] += len(chunk.token_ids)
                    delta = decoders[i].feed(chunk)
                    if chunk.finish_reason is not None:
                        running -= 1
                        if chunk.error:
                            if running:  # the other choices go too
                                self._handle.cancel()
                            self._done = True
                            raise EngineFailure(chunk.error)
                        if not running:
                            self._done = True
                            metrics.prompt_tokens.inc(len(turn.prompt))  # once: the choices share it
                            metrics.generation_tokens.inc(sum(generated))
                            metrics.e2e.observe(time.perf_counter() - started)
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


def _cancel_submitted(pending: asyncio.Future[RequestHandle]) -> None:
    if not pending.cancelled() and pending.exception() is None:
        pending.result().cancel()


class EngineFailure(Exception):
    """The engine aborted a request (its message is safe to show)."""
