"""Async bridge: one prepared turn through the engine's thread, as an async stream of deltas."""

from __future__ import annotations

import asyncio
import time
from typing import AsyncIterator

from qwenkit.engines.base import Chunk
from qwenkit.model import Model, PreparedTurn
from qwenkit.results import ChatDelta
from qwenkit.serve.metrics import Metrics


async def run_turn(model: Model, turn: PreparedTurn, metrics: Metrics) -> AsyncIterator[ChatDelta]:
    """Submit `turn` and yield its deltas; leaving early (a client gone) cancels the request."""
    loop = asyncio.get_running_loop()
    chunks: asyncio.Queue[Chunk] = asyncio.Queue()

    def emit(chunk: Chunk) -> None:
        try:
            loop.call_soon_threadsafe(chunks.put_nowait, chunk)
        except RuntimeError:  # the event loop is gone (shutdown): nobody is listening
            pass

    handle = model.engine.submit(turn.prompt, turn.params, emit)
    decoder = model.decoder(turn)
    started = last = time.perf_counter()
    generated = 0
    finished = False
    try:
        while True:
            chunk = await chunks.get()
            if chunk.token_ids:
                now = time.perf_counter()
                if generated == 0:
                    metrics.ttft.observe(now - started)
                else:
                    metrics.itl.observe((now - last) / len(chunk.token_ids))
                last = now
                generated += len(chunk.token_ids)
            delta = decoder.feed(chunk)
            if chunk.finish_reason is not None:
                finished = True
                metrics.prompt_tokens.inc(len(turn.prompt))
                metrics.generation_tokens.inc(generated)
                metrics.e2e.observe(time.perf_counter() - started)
                if chunk.error:
                    raise EngineFailure(chunk.error)
            yield delta
            if finished:
                return
    finally:
        if not finished:
            handle.cancel()
            metrics.cancelled.inc()


class EngineFailure(Exception):
    """The engine aborted a request (its message is safe to show)."""
