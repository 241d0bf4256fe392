"""What the engine test files share: running a prompt, collecting `n` choices, reading chunks, and a
step controller that forces tokens. Every wait is bounded."""

from __future__ import annotations

import queue
import threading
import time

from qwenkit.engines.base import Chunk, SamplingParams

IM_END, ENDOFTEXT = 151645, 151643
GREEDY = dict(temperature=0.0)
PROMPTS = [
    "<|im_start|>user\nWrite a poem about the sea.<|im_end|>\n<|im_start|>assistant\n",
    "<|im_start|>user\n你好<|im_end|>\n<|im_start|>assistant\n",
    "def fib(n):",
]


def run(engine, prompt, controller=None, **params) -> list[Chunk]:
    """The chunks of one generation (`prompt`: text or token ids)."""
    ids = engine.tokenize(prompt) if isinstance(prompt, str) else list(prompt)
    chunks = []
    for chunk in engine.generate(ids, SamplingParams(**params), controller):
        chunks.append(chunk)
        assert len(chunks) <= params.get("max_tokens", 512) + 2, "more chunks than tokens allowed"
    return chunks


def choices(engine, prompt, n=1, **params) -> dict[int, list[Chunk]]:
    """Every choice's chunks, by index (bounded: each choice ends with one final chunk)."""
    got: queue.Queue[Chunk] = queue.Queue()
    ids = engine.tokenize(prompt) if isinstance(prompt, str) else list(prompt)
    engine.submit(ids, SamplingParams(**params), got.put, n=n)
    chunks: dict[int, list[Chunk]] = {i: [] for i in range(n)}
    for _ in range(n * (params.get("max_tokens", 512) + 2)):
        chunk = got.get(timeout=120)
        chunks[chunk.index].append(chunk)
        if all(cs and cs[-1].finish_reason is not None for cs in chunks.values()):
            break
    assert all(cs and cs[-1].finish_reason is not None for cs in chunks.values())
    return chunks


def ids_of(chunks) -> list[int]:
    return [t for c in chunks for t in c.token_ids]


def text_of(chunks) -> str:
    return "".join(c.text for c in chunks)


def check_stream_shape(chunks):
    """Exactly one final chunk, and it is the last."""
    assert chunks, "no chunks"
    assert chunks[-1].finish_reason is not None
    assert all(c.finish_reason is None for c in chunks[:-1])


class ForceAfter:
    """Forces `tokens` once, after the `after`-th generated token; counts its calls."""

    def __init__(self, after: int, tokens: list[int]) -> None:
        self.after, self.tokens, self.calls = after, tokens, 0

    def after_token(self, generated):
        self.calls += 1
        return self.tokens if len(generated) == self.after else ()


class HoldAfter:
    """Forces nothing, but holds the engine's step loop after the `after`-th generated token until
    `release` is set (at most `timeout_s`): the request is then known to be decoding. `decoding` is
    set when the hold starts."""

    def __init__(self, after: int, timeout_s: float = 120.0) -> None:
        self.after, self.timeout_s = after, timeout_s
        self.decoding, self.release = threading.Event(), threading.Event()

    def after_token(self, generated):
        if len(generated) == self.after:
            self.decoding.set()
            self.release.wait(self.timeout_s)
        return ()


def wait_until(predicate, timeout_s: float = 120.0) -> bool:
    """Poll `predicate()` until it holds or `timeout_s` passes; returns its last value."""
    deadline = time.monotonic() + timeout_s
    while not (held := predicate()) and time.monotonic() < deadline:
        time.sleep(0.01)
    return held
