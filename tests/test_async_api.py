"""The Python API for services: stream, achat/astream (event loop never blocked), batch, config.

Run on both engines with tiny random models; greedy output is deterministic, so an async or
batched turn must give exactly what the plain synchronous `chat` gives.
"""

from __future__ import annotations

import asyncio
import os
import time

import pytest

import qwenkit
from qwenkit import GenerationConfig
from qwenkit.errors import BadRequest

GREEDY = GenerationConfig(max_tokens=12, temperature=0.0)
CONVERSATIONS = [
    "Write a poem about the sea.",
    [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "List three colours."}],
    "你好，请介绍一下你自己。",
]


@pytest.fixture(scope="module", params=["transformers", "llamacpp"])
def model(request):
    if request.param == "transformers":
        pytest.importorskip("torch", reason="the transformers extra is not installed")
        path = request.getfixturevalue("tiny_hf_qwen2")
    else:
        path = request.getfixturevalue("tiny_qwen2")
    threads = int(os.environ.get("QWENKIT_TEST_TORCH_THREADS", "1")) if request.param == "transformers" else 2
    m = qwenkit.load(str(path), engine=request.param, n_ctx=512, n_parallel=4, n_threads=threads, progress=False)
    yield m
    m.close()


def _wait_idle(model, timeout=10.0):
    deadline = time.monotonic() + timeout
    while model.engine.stats().running and time.monotonic() < deadline:
        time.sleep(0.05)
    return model.engine.stats().running


def test_config_and_keyword_overrides(model):
    r = model.chat("hello", config=GREEDY)
    assert r.usage.completion_tokens == 12 and r.finish_reason == "length"
    r = model.chat("hello", config=GREEDY, max_tokens=3)
    assert r.usage.completion_tokens == 3
    assert model.chat("hello", config={"max_tokens": 2, "temperature": 0}).usage.completion_tokens == 2
    assert GREEDY.replace(max_tokens=5).options() == {"max_tokens": 5, "temperature": 0.0}
    with pytest.raises(BadRequest):
        model.chat("hello", config=42)


def test_generation_config_from_transformers():
    transformers = pytest.importorskip("transformers")
    hf = transformers.GenerationConfig(max_new_tokens=7, do_sample=False, top_k=20)
    cfg = GenerationConfig.from_hf(hf, think=False)
    assert cfg.max_tokens == 7 and cfg.temperature == 0.0 and cfg.top_k == 20 and cfg.think is False


def test_stream_matches_chat(model):
    whole = model.chat(CONVERSATIONS[0], config=GREEDY)
    deltas = list(model.stream(CONVERSATIONS[0], config=GREEDY))
    assert deltas[-1].result is not None and deltas[-1].finish_reason == "length"
    assert "".join(d.content for d in deltas) == whole.content == deltas[-1].result.content


def test_achat_and_astream_match_chat(model):
    whole = model.chat(CONVERSATIONS[1], config=GREEDY)

    async def main():
        r = await model.achat(CONVERSATIONS[1], config=GREEDY)
        parts, last = [], None
        async for delta in model.astream(CONVERSATIONS[1], config=GREEDY):
            parts.append(delta.content)
            last = delta
        return r, "".join(parts), last

    r, streamed, last = asyncio.run(main())
    assert r.content == whole.content == streamed == last.result.content
    assert (r.usage.prompt_tokens, r.usage.completion_tokens, r.usage.reasoning_tokens) == (
        whole.usage.prompt_tokens,
        whole.usage.completion_tokens,
        whole.usage.reasoning_tokens,
    )  # cache hits may differ


def test_achat_does_not_block_the_event_loop(model):
    async def main():
        ticks = 0
        done = asyncio.Event()

        async def ticker():
            nonlocal ticks
            while not done.is_set():
                ticks += 1
                await asyncio.sleep(0.002)

        task = asyncio.create_task(ticker())
        await asyncio.sleep(0)
        start = ticks
        r = await model.achat("Tell me a long story.", max_tokens=48, temperature=0)
        during = ticks - start
        done.set()
        await task
        return r, during

    r, during = asyncio.run(main())
    assert r.usage.completion_tokens == 48
    assert during >= 5, f"the event loop ran only {during} ticks while generating"


def test_leaving_astream_early_cancels(model):
    async def main():
        stream = model.astream("Count to one thousand.", max_tokens=400, temperature=0)
        async for delta in stream:
            if delta.content:
                break
        await stream.aclose()

    asyncio.run(main())
    assert _wait_idle(model) == 0
    assert model.chat("hello", config=GREEDY).usage.completion_tokens == 12  # still serving


def test_cancelling_achat_cancels_the_request(model):
    async def main():
        task = asyncio.create_task(model.achat("Count to one thousand.", max_tokens=450, temperature=0))
        deadline = time.monotonic() + 60
        while not model.engine.stats().running and time.monotonic() < deadline:
            await asyncio.sleep(0.001)  # cancel as soon as the engine runs it
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    assert _wait_idle(model) == 0


def test_concurrent_achats_equal_solo(model):
    solo = [model.chat(c, config=GREEDY).content for c in CONVERSATIONS]

    async def main():
        return await asyncio.gather(*(model.achat(c, config=GREEDY) for c in CONVERSATIONS))

    assert [r.content for r in asyncio.run(main())] == solo


def test_batch_equals_individual_results(model):
    solo = [model.chat(c, config=GREEDY) for c in CONVERSATIONS]
    batched = model.batch(CONVERSATIONS, config=GREEDY)
    assert [r.content for r in batched] == [r.content for r in solo]
    assert [(r.usage.prompt_tokens, r.usage.completion_tokens, r.usage.reasoning_tokens) for r in batched] == [
        (r.usage.prompt_tokens, r.usage.completion_tokens, r.usage.reasoning_tokens) for r in solo
    ]
    assert [r.content for r in asyncio.run(model.abatch(CONVERSATIONS, config=GREEDY))] == [r.content for r in solo]


def test_batch_with_bad_input_is_a_clear_error(model):
    with pytest.raises(BadRequest):
        model.batch(["fine", []], config=GREEDY)
