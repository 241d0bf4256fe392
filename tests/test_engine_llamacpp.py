"""The llama.cpp engine: tokens, streaming text, sampling, stops, batching, prefix reuse, forcing.

Most tests run on tiny random-weight models with the real Qwen tokenizer (greedy output is a
deterministic but meaningless token sequence, which makes any mixing of sequences or cache
mistakes visible at once); tests marked `integration` load the real Qwen2.5-Coder-0.5B.
"""

from __future__ import annotations

import os
import queue
import threading

import pytest
from engine_helpers import ENDOFTEXT, GREEDY, IM_END, check_stream_shape, ids_of, run, text_of

from qwenkit.engines.base import Chunk, SamplingParams
from qwenkit.engines.llamacpp import LlamaCppEngine, LlamaCppSettings
from qwenkit.engines.llamacpp.slots import Slot, slot_for
from qwenkit.errors import BadRequest, ModelLoadError, QwenkitError
from qwenkit.testing import tiny

THREADS = int(os.environ.get("QWENKIT_TEST_THREADS", "2"))


def chat_prompt(user: str, system: str | None = None) -> str:
    head = f"<|im_start|>system\n{system}<|im_end|>\n" if system else ""
    return f"{head}<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n"


@pytest.fixture(scope="module")
def tiny_engine(tiny_qwen2):
    engine = LlamaCppEngine(tiny_qwen2, LlamaCppSettings(n_ctx=1024, n_threads=THREADS))
    yield engine
    engine.close()


@pytest.fixture(scope="module")
def tiny_eos_path(source_gguf, tiny_cache):
    return tiny.tiny_gguf("qwen2", tiny_cache, source_gguf=source_gguf, bias_token=IM_END)


@pytest.fixture(scope="module")
def real_engine(source_gguf):
    engine = LlamaCppEngine(source_gguf, LlamaCppSettings(n_ctx=1024, n_threads=THREADS))
    yield engine
    engine.close()


@pytest.fixture(scope="module")
def greedy_reference(tiny_engine):
    """40 greedy tokens of the tiny model for a fixed prompt, with each token's text."""
    chunks = run(tiny_engine, chat_prompt("Tell me a story."), max_tokens=40, **GREEDY)
    check_stream_shape(chunks)
    assert chunks[-1].finish_reason == "length"
    return chunks


# ----- tokens and text ---------------------------------------------------------------------

CORPUS = [
    "The quick brown fox jumps over the lazy dog. 1234567890!",
    "你好，世界！机器学习和自然语言处理很有趣。",
    "emoji 😀🎉👍🏽 🪐 family: 👨‍👩‍👧",
    'def add(a: int, b: int) -> int:\n    """Sum."""\n\treturn a + b  # {\'k\': [1, 2]}\n',
    "Ünïcödé ß ñ Здравствуй мир こんにちは 안녕하세요 العربية 龘靐齉",
    "  leading and trailing spaces  \n\n",
]


@pytest.mark.integration
@pytest.mark.parametrize("text", CORPUS)
def test_tokenize_detokenize_round_trip(real_engine, text):
    ids = real_engine.tokenize(text)
    assert ids and all(0 <= t < real_engine.model.n_vocab for t in ids)
    assert real_engine.detokenize(ids) == text
    # byte pieces joined are the text too (the path the scheduler streams through)
    assert b"".join(real_engine.model.piece(t) for t in ids).decode("utf-8") == text


@pytest.mark.integration
def test_special_tokens_parse_only_when_asked(real_engine):
    assert real_engine.tokenize("<|im_end|>") == [IM_END]
    assert real_engine.tokenize("<|im_start|>") == [151644]
    plain = real_engine.tokenize("<|im_end|>", special=False)
    assert IM_END not in plain and len(plain) > 1
    assert real_engine.detokenize(plain) == "<|im_end|>"
    assert {IM_END, ENDOFTEXT} <= real_engine.eos_token_ids()


@pytest.mark.integration
def test_streaming_chinese_and_emoji_never_yields_replacement_chars(real_engine):
    # greedy output of this prompt ends with 🪐, a character the vocabulary splits over 3 tokens
    prompt = chat_prompt("用中文写一句关于土星的话，句末加上表情🪐🦄。")
    chunks = run(real_engine, prompt, max_tokens=48, repetition_penalty=1.05, **GREEDY)
    check_stream_shape(chunks)
    for chunk in chunks:
        assert "\ufffd" not in chunk.text, f"partial character in chunk {chunk!r}"
    ids = [t for t in ids_of(chunks) if t not in real_engine.eos_token_ids()]
    text = text_of(chunks)
    assert text == real_engine.detokenize(ids)
    assert any("\u4e00" <= ch <= "\u9fff" for ch in text), f"no Chinese in {text!r}"
    split = [t for t in ids if not _is_utf8(real_engine.model.piece(t))]
    assert split, f"the output {text!r} has no character split over tokens; pick another prompt"
    # a chunk whose token completed no character carries no text, and the next one does
    assert any(c.token_ids and not c.text for c in chunks)


def _is_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


# ----- determinism and sampling ------------------------------------------------------------


@pytest.mark.integration
def test_greedy_is_deterministic_real(real_engine):
    # A repeated prompt is served from the prefix cache, so only its last token is decoded,
    # alone: llama.cpp's quantized kernels are not batch-invariant (logits differ by ~0.3 on
    # this Q4_K_M model between a batched and a single-token decode), so a cold first run may
    # pick another token at a near tie. Runs on the same cache state must agree exactly.
    prompt = chat_prompt("Name three primary colors.")
    runs = [run(real_engine, prompt, max_tokens=12, **GREEDY) for _ in range(3)]
    assert ids_of(runs[1]) == ids_of(runs[2])
    assert text_of(runs[1]) == text_of(runs[2])
    for chunks in runs[:2]:  # the cold run too: 12 tokens of text, the text of its tokens
        assert len(ids_of(chunks)) == 12 and text_of(chunks) == real_engine.detokenize(ids_of(chunks))
        assert text_of(chunks).strip()


def test_sampling_is_not_greedy(tiny_engine, greedy_reference):
    sampled = ids_of(run(tiny_engine, chat_prompt("Tell me a story."), max_tokens=40, temperature=1.0, seed=7))
    assert sampled != ids_of(greedy_reference)


def test_stop_string_cuts_text_before_it(tiny_engine, greedy_reference):
    full = text_of(greedy_reference)
    # a stop string spanning the boundary between the 10th and 11th token's text
    boundary = len(text_of(greedy_reference[:10]))
    stop = full[boundary - 2 : boundary + 2]
    assert len(stop) == 4
    cut = full.find(stop)
    chunks = run(tiny_engine, chat_prompt("Tell me a story."), max_tokens=40, stop=(stop,), **GREEDY)
    check_stream_shape(chunks)
    assert chunks[-1].finish_reason == "stop"
    assert chunks[-1].stop_sequence == stop
    assert text_of(chunks) == full[:cut]
    # generation ended at the token that completed the stop string
    assert len(ids_of(chunks)) <= 11


def test_several_stop_strings_earliest_wins(tiny_engine, greedy_reference):
    full = text_of(greedy_reference)
    early, late = full[5:8], full[-6:-2]
    assert full.find(early) < full.find(late)
    chunks = run(tiny_engine, chat_prompt("Tell me a story."), max_tokens=40, stop=(late, early), **GREEDY)
    assert chunks[-1].stop_sequence == early
    assert text_of(chunks) == full[: full.find(early)]


def test_end_of_generation_token_stops_at_once(tiny_eos_path):
    engine = LlamaCppEngine(tiny_eos_path, LlamaCppSettings(n_ctx=256, n_threads=THREADS))
    try:
        assert {IM_END, ENDOFTEXT} <= engine.eos_token_ids()
        chunks = run(engine, chat_prompt("hi"), max_tokens=20, **GREEDY)
        assert len(chunks) == 1
        assert chunks[0].finish_reason == "stop"
        assert chunks[0].token_ids == [IM_END]
        assert chunks[0].text == ""
        # with sampling too (the bias gives a logit margin of about 30)
        chunks = run(engine, chat_prompt("hi"), max_tokens=20, temperature=0.8, seed=3)
        assert [c.finish_reason for c in chunks] == ["stop"]
    finally:
        engine.close()


def test_logit_bias_forces_a_token(tiny_engine):
    forced = tiny_engine.tokenize(" hello")
    assert len(forced) == 1
    for extra in (GREEDY, dict(temperature=1.0, seed=5)):
        chunks = run(
            tiny_engine, chat_prompt("Tell me a story."), max_tokens=6, logit_bias=((forced[0], 100.0),), **extra
        )
        assert ids_of(chunks) == forced * 6
        assert text_of(chunks) == " hello" * 6


def test_logit_bias_can_ban_a_token(tiny_engine, greedy_reference):
    first = ids_of(greedy_reference)[0]
    chunks = run(
        tiny_engine, chat_prompt("Tell me a story."), max_tokens=3, logit_bias=((first, float("-inf")),), **GREEDY
    )
    assert ids_of(chunks)[0] != first


@pytest.mark.parametrize(
    "params",
    [
        dict(temperature=0.0),
        dict(temperature=-1.0),  # <= 0 is greedy
        dict(temperature=1.3, seed=1),
        dict(top_p=0.5, seed=1),
        dict(top_k=5, seed=1),
        dict(top_k=1, seed=1),
        dict(min_p=0.2, seed=1),
        dict(repetition_penalty=1.3),
        dict(presence_penalty=1.5),
        dict(frequency_penalty=0.7),
        dict(presence_penalty=-0.5, frequency_penalty=-0.5),
        dict(temperature=0.7, top_p=0.8, top_k=20, min_p=0.05, repetition_penalty=1.05, seed=9),
    ],
)
def test_sampling_params_are_accepted(tiny_engine, params):
    chunks = run(tiny_engine, chat_prompt("Tell me a story."), max_tokens=5, **params)
    check_stream_shape(chunks)
    assert chunks[-1].finish_reason == "length" and chunks[-1].error is None
    assert len(ids_of(chunks)) == 5


def test_top_k_1_is_greedy(tiny_engine, greedy_reference):
    chunks = run(tiny_engine, chat_prompt("Tell me a story."), max_tokens=10, temperature=1.5, top_k=1, seed=3)
    assert ids_of(chunks) == ids_of(greedy_reference)[:10]


@pytest.mark.parametrize(
    "penalty", [dict(repetition_penalty=50.0), dict(presence_penalty=10.0), dict(frequency_penalty=10.0)]
)
def test_penalties_act_on_repeated_tokens(tiny_engine, penalty):
    # a +3 bias makes greedy repeat one token (the tiny model's logits are below 1); each
    # penalty must push that token down once it has been generated
    token = tiny_engine.tokenize(" again")[0]
    bias = dict(logit_bias=((token, 3.0),), max_tokens=6, **GREEDY)
    plain = ids_of(run(tiny_engine, chat_prompt("Tell me a story."), **bias))
    assert plain == [token] * 6
    penalized = ids_of(run(tiny_engine, chat_prompt("Tell me a story."), **bias, **penalty))
    assert penalized[0] == token
    assert penalized.count(token) < 6


@pytest.mark.parametrize(
    "params",
    [
        dict(max_tokens=0),
        dict(max_tokens=-3),
        dict(top_p=0.0),
        dict(top_p=1.5),
        dict(top_k=-1),
        dict(min_p=-0.1),
        dict(min_p=1.5),
        dict(repetition_penalty=0.0),
        dict(repetition_penalty=-1.0),
        dict(temperature=float("nan")),
        dict(top_p=float("nan")),
        dict(repetition_penalty=float("nan")),
        dict(presence_penalty=float("inf")),
        dict(frequency_penalty=float("nan")),
    ],
)
def test_invalid_sampling_params_are_rejected(params):
    (name,) = params
    with pytest.raises(ValueError, match=f"^{name} must"):
        SamplingParams(**params)


def test_logit_bias_outside_vocabulary_is_a_bad_request(tiny_engine):
    n_vocab = tiny_engine.model.n_vocab
    for token in (n_vocab, -1, 10**9):
        with pytest.raises(BadRequest, match="logit_bias"):
            run(tiny_engine, chat_prompt("hi"), max_tokens=2, logit_bias=((token, 1.0),))
    assert run(tiny_engine, chat_prompt("hi"), max_tokens=2)[-1].finish_reason == "length"


# ----- request errors ----------------------------------------------------------------------


def test_prompt_longer_than_context_is_a_bad_request(tiny_engine):
    too_long = tiny_engine.tokenize("word " * (tiny_engine.n_ctx + 10))
    assert len(too_long) > tiny_engine.n_ctx
    with pytest.raises(BadRequest, match="context"):
        run(tiny_engine, too_long, max_tokens=3)
    with pytest.raises(BadRequest):
        run(tiny_engine, too_long[: tiny_engine.n_ctx], max_tokens=3)
    # the engine still serves requests afterwards
    assert run(tiny_engine, chat_prompt("hi"), max_tokens=2)[-1].finish_reason == "length"


def test_prompt_filling_the_context_ends_with_length(tiny_engine):
    prompt = tiny_engine.tokenize("word " * tiny_engine.n_ctx)[: tiny_engine.n_ctx - 4]
    chunks = run(tiny_engine, prompt, max_tokens=100, **GREEDY)
    check_stream_shape(chunks)
    assert chunks[-1].finish_reason == "length" and chunks[-1].error is None
    assert 1 <= len(ids_of(chunks)) <= 4


def test_closing_the_iterator_cancels_the_request(tiny_qwen2):
    engine = LlamaCppEngine(tiny_qwen2, LlamaCppSettings(n_ctx=1024, n_parallel=1, n_threads=THREADS))
    try:
        steps = []

        class Count:
            def after_token(self, generated):
                steps.append(len(generated))
                return ()

        stream = engine.generate(
            engine.tokenize(chat_prompt("Tell me a story.")), SamplingParams(max_tokens=600, temperature=0), Count()
        )
        taken = [next(stream) for _ in range(3)]
        assert all(c.finish_reason is None for c in taken)
        stream.close()
        # one slot only: this request runs once the cancelled one has left it
        after = run(engine, chat_prompt("hi"), max_tokens=4, **GREEDY)
        assert after[-1].finish_reason == "length" and len(ids_of(after)) == 4
        assert len(steps) < 600, "the cancelled request ran to max_tokens"
    finally:
        engine.close()


def test_closed_engine_refuses_work_without_crashing(tiny_qwen2):
    engine = LlamaCppEngine(tiny_qwen2, LlamaCppSettings(n_ctx=256, n_threads=THREADS))
    prompt = engine.tokenize(chat_prompt("hi"))
    engine.close()
    engine.close()  # twice is fine
    with pytest.raises(QwenkitError, match="closed"):
        run(engine, prompt, max_tokens=2)
    with pytest.raises(QwenkitError, match="closed"):
        engine.tokenize("hello")  # llama.cpp's vocabulary is freed: must not be touched
    with pytest.raises(QwenkitError, match="closed"):
        engine.chat_template()


def test_closing_the_engine_ends_a_running_request(tiny_qwen2):
    engine = LlamaCppEngine(tiny_qwen2, LlamaCppSettings(n_ctx=1024, n_threads=THREADS))
    chunks: queue.Queue[Chunk] = queue.Queue()
    started = threading.Event()

    class Started:
        def after_token(self, generated):
            started.set()
            return ()

    engine.submit(
        engine.tokenize(chat_prompt("Tell me a story.")),
        SamplingParams(max_tokens=900, temperature=0),
        chunks.put,
        Started(),
    )
    assert started.wait(timeout=300)
    engine.close()
    got = _drain(chunks)
    assert got[-1].finish_reason in ("abort", "length")
    if got[-1].finish_reason == "abort":
        assert "shutting down" in (got[-1].error or "")


# ----- batching and prefix reuse -----------------------------------------------------------

PROMPTS = [
    chat_prompt("Tell me a story."),
    chat_prompt("What is 2+2?"),
    chat_prompt("用中文介绍一下你自己。", system="You are terse."),
    chat_prompt("List three colors, then explain why the sky is blue in detail."),
]


def test_parallel_requests_match_sequential(tiny_qwen2, tiny_engine):
    sequential = [ids_of(run(tiny_engine, p, max_tokens=32, **GREEDY)) for p in PROMPTS]
    engine = LlamaCppEngine(tiny_qwen2, LlamaCppSettings(n_ctx=1024, n_parallel=4, n_threads=THREADS))
    try:
        busy = []

        class Watch:
            def after_token(self, generated):
                busy.append(sum(s.busy for s in engine.scheduler.slots))
                return ()

        results: list[list[int] | None] = [None] * len(PROMPTS)
        errors: list[BaseException] = []
        barrier = threading.Barrier(len(PROMPTS))

        def worker(k: int) -> None:
            try:
                barrier.wait(timeout=60)
                results[k] = ids_of(run(engine, PROMPTS[k], Watch(), max_tokens=32, **GREEDY))
            except BaseException as exc:  # reported below
                errors.append(exc)

        threads = [threading.Thread(target=worker, args=(k,)) for k in range(len(PROMPTS))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=600)
        assert not errors, errors
        assert results == sequential
        assert max(busy) >= 2, "the requests never ran together"
        # and once more on the same engine, one at a time (slots now hold stale caches)
        assert [ids_of(run(engine, p, max_tokens=32, **GREEDY)) for p in PROMPTS] == sequential
    finally:
        engine.close()


SYSTEM = "You are a careful assistant who answers briefly and precisely. " * 12


def test_prefix_reuse_after_finished_request(tiny_qwen2):
    first, second = chat_prompt("first question", SYSTEM), chat_prompt("second question", SYSTEM)
    fresh = LlamaCppEngine(tiny_qwen2, LlamaCppSettings(n_ctx=1024, n_threads=THREADS))
    try:
        reference = ids_of(run(fresh, second, max_tokens=24, **GREEDY))
    finally:
        fresh.close()
    engine = LlamaCppEngine(tiny_qwen2, LlamaCppSettings(n_ctx=1024, n_parallel=2, n_threads=THREADS))
    try:
        a, b = engine.tokenize(first), engine.tokenize(second)
        common = next(i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y)
        assert common > 100
        run(engine, a, max_tokens=8, **GREEDY)
        before = engine.stats()
        assert before.prefix_hit_tokens == 0 and before.prompt_tokens == len(a)
        out = ids_of(run(engine, b, max_tokens=24, **GREEDY))
        stats = engine.stats()
        assert stats.prefix_hit_tokens == common
        assert stats.prompt_tokens == len(a) + len(b)
        assert out == reference
        # the very same prompt again: all but the last token come from the cache
        again = ids_of(run(engine, b, max_tokens=24, **GREEDY))
        assert again == reference
        assert engine.stats().prefix_hit_tokens == common + len(b) - 1
    finally:
        engine.close()


def test_a_new_conversation_does_not_evict_another(tiny_qwen2):
    """Two users sharing a system prompt: each keeps its own slot, the shared part is copied."""
    first, second = chat_prompt("first question", SYSTEM), chat_prompt("second question", SYSTEM)
    engine = LlamaCppEngine(tiny_qwen2, LlamaCppSettings(n_ctx=1024, n_parallel=2, n_threads=THREADS))
    try:
        a, b = engine.tokenize(first), engine.tokenize(second)
        common = next(i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y)
        answer_a = ids_of(run(engine, a, max_tokens=8, **GREEDY))
        run(engine, b, max_tokens=8, **GREEDY)  # takes the empty slot, copying the shared prefix
        assert engine.stats().prefix_hit_tokens == common
        follow_up = a + answer_a[:-1]  # user A comes back: all of it is still cached
        assert ids_of(run(engine, follow_up, max_tokens=4, **GREEDY))
        assert engine.stats().prefix_hit_tokens == common + len(follow_up) - 1
        held = sorted(s.cached[: len(a)] == a for s in engine.scheduler.slots)
        assert held == [False, True] and any(s.cached[: len(b)] == b for s in engine.scheduler.slots)
    finally:
        engine.close()


def _slots(*caches: list[int]) -> list[Slot]:
    slots = [Slot(i) for i in range(len(caches))]
    for slot, cached in zip(slots, caches, strict=False):
        slot.cached = list(cached)
    return slots


def test_slot_choice_keeps_running_sequences_contiguous():
    conversation = [1, 2, 3, 4, 5]
    slots = _slots([], [], [9, 9, 9], [], [], conversation, [], [])
    free = slots[2:]
    # slots 0 and 1 run: slot 2 joins them although slot 5 holds this conversation (it is copied)
    assert slot_for(free, {0, 1}, [*conversation, 6]) is slots[2]
    # nothing runs: the conversation's own slot, then an empty one rather than a used one
    assert slot_for(free, set(), [*conversation, 6]) is slots[5]
    assert slot_for(free, set(), [7, 8]) is slots[3]
    # between two gaps, the one that closes the gap
    assert slot_for([slots[1], slots[3], slots[7]], {0, 2}, [7]) is slots[1]


def test_a_follow_up_joins_the_running_batch_and_copies_its_history(tiny_qwen2):
    first = chat_prompt("first question", SYSTEM)
    engine = LlamaCppEngine(tiny_qwen2, LlamaCppSettings(n_ctx=1024, n_parallel=3, n_threads=THREADS))
    try:
        a = engine.tokenize(first)
        answer = ids_of(run(engine, a, max_tokens=8, **GREEDY))  # slot 0
        run(engine, engine.tokenize(chat_prompt("unrelated")), max_tokens=8, **GREEDY)  # slot 1
        follow_up = a + answer[:-1] + engine.tokenize("<|im_start|>user\nmore<|im_end|>\n<|im_start|>assistant\n")
        reference = ids_of(run(engine, follow_up, max_tokens=12, **GREEDY))  # in slot 0
        done: queue.Queue[Chunk] = queue.Queue()

        class FollowUpMidway:
            def after_token(self, generated):
                if len(generated) == 2:
                    engine.submit(follow_up, SamplingParams(max_tokens=12, temperature=0), done.put)
                return ()

        hits = engine.stats().prefix_hit_tokens
        long_prompt = engine.tokenize(chat_prompt("a long answer please"))
        engine.submit(long_prompt, SamplingParams(max_tokens=40, temperature=0), queue.Queue().put, FollowUpMidway())
        assert ids_of(_drain(done)) == reference
        assert engine.stats().prefix_hit_tokens - hits >= len(follow_up) - 1
        runner = next(s for s in engine.scheduler.slots if s.cached[: len(long_prompt)] == long_prompt)
        joined = next(
            s
            for s in engine.scheduler.slots
            if s.cached[: len(follow_up)] == follow_up and s is not engine.scheduler.slots[0]
        )
        assert abs(runner.seq_id - joined.seq_id) == 1
    finally:
        engine.close()


def test_prefix_shared_with_a_running_request(tiny_qwen2):
    first, second = chat_prompt("first question", SYSTEM), chat_prompt("second question", SYSTEM)
    fresh = LlamaCppEngine(tiny_qwen2, LlamaCppSettings(n_ctx=1024, n_threads=THREADS))
    try:
        ref_first = ids_of(run(fresh, first, max_tokens=40, **GREEDY))
        ref_second = ids_of(run(fresh, second, max_tokens=16, **GREEDY))
    finally:
        fresh.close()
    engine = LlamaCppEngine(tiny_qwen2, LlamaCppSettings(n_ctx=1024, n_parallel=2, n_threads=THREADS))
    try:
        a_chunks: queue.Queue[Chunk] = queue.Queue()
        b_chunks: queue.Queue[Chunk] = queue.Queue()
        b_prompt = engine.tokenize(second)

        class SubmitSecondMidway:
            """Submits the second request while the first is decoding (its prefix is in cache)."""

            def after_token(self, generated):
                if len(generated) == 2:
                    engine.submit(b_prompt, SamplingParams(max_tokens=16, temperature=0), b_chunks.put)
                return ()

        engine.submit(
            engine.tokenize(first), SamplingParams(max_tokens=40, temperature=0), a_chunks.put, SubmitSecondMidway()
        )
        got_b, got_a = _drain(b_chunks), _drain(a_chunks)
        assert ids_of(got_b) == ref_second
        assert ids_of(got_a) == ref_first
        assert engine.stats().prefix_hit_tokens > 100
    finally:
        engine.close()


def _drain(chunks: queue.Queue) -> list[Chunk]:
    out = []
    for _ in range(1000):
        chunk = chunks.get(timeout=300)
        out.append(chunk)
        if chunk.finish_reason is not None:
            return out
    raise AssertionError("no final chunk")


# ----- step controller ---------------------------------------------------------------------


class ForceOnce:
    """Forces `tokens` once, after the `after`-th generated token."""

    def __init__(self, tokens, after):
        self.tokens, self.after, self.calls = list(tokens), after, []

    def after_token(self, generated):
        self.calls.append(list(generated))
        return self.tokens if len(generated) == self.after else ()


def test_controller_forces_tokens_and_generation_continues(tiny_engine):
    forced = tiny_engine.tokenize(" FORCED words here")
    controller = ForceOnce(forced, after=2)
    prompt = tiny_engine.tokenize(chat_prompt("Tell me a story."))
    chunks = run(tiny_engine, prompt, controller, max_tokens=12, **GREEDY)
    check_stream_shape(chunks)
    flagged = [c for c in chunks if c.forced]
    assert len(flagged) == 1 and flagged[0].token_ids == forced
    assert flagged[0].text == " FORCED words here"
    at = chunks.index(flagged[0])
    assert at == 2 and all(not c.forced for c in chunks[:at])
    # forced tokens count towards max_tokens, and sampled tokens follow them
    all_ids = ids_of(chunks)
    assert len(all_ids) == 12 and chunks[-1].finish_reason == "length"
    assert len(ids_of(chunks[at + 1 :])) == 12 - 2 - len(forced) > 0
    assert " FORCED words here" in text_of(chunks)
    # the controller saw the forced tokens as generated
    assert controller.calls[2][2 : 2 + len(forced)] == forced
    # the model really read the forced tokens: the continuation equals greedy from a prompt
    # that already contains them
    head = all_ids[: 2 + len(forced)]
    cont = ids_of(run(tiny_engine, prompt + head, max_tokens=12 - len(head), **GREEDY))
    assert all_ids[len(head) :] == cont


def test_forced_tokens_are_cut_at_max_tokens(tiny_engine):
    forced = tiny_engine.tokenize(" one two three four five six")
    chunks = run(tiny_engine, chat_prompt("hi"), ForceOnce(forced, after=1), max_tokens=4, **GREEDY)
    assert chunks[-1].finish_reason == "length"
    assert len(ids_of(chunks)) == 4
    assert [t for c in chunks if c.forced for t in c.token_ids] == forced[:3]


def test_forced_text_can_complete_a_stop_string(tiny_engine):
    forced = tiny_engine.tokenize(" alpha END omega")
    chunks = run(tiny_engine, chat_prompt("hi"), ForceOnce(forced, after=1), max_tokens=20, stop=("END",), **GREEDY)
    assert chunks[-1].finish_reason == "stop" and chunks[-1].stop_sequence == "END"
    text = text_of(chunks)
    assert text.endswith(" alpha ") and "END" not in text and "omega" not in text


# ----- loading -----------------------------------------------------------------------------


def test_missing_file_raises_model_load_error(tmp_path):
    with pytest.raises(ModelLoadError, match="not found"):
        LlamaCppEngine(tmp_path / "nope.gguf", LlamaCppSettings(n_threads=THREADS))


def test_random_bytes_raise_model_load_error(tmp_path):
    path = tmp_path / "x.gguf"
    path.write_bytes(os.urandom(4096))
    with pytest.raises(ModelLoadError, match="could not load"):
        LlamaCppEngine(path, LlamaCppSettings(n_threads=THREADS))


@pytest.mark.parametrize("fraction", [0.0005, 0.5, 0.999])
def test_truncated_gguf_raises_model_load_error(tmp_path, tiny_qwen2, fraction):
    data = tiny_qwen2.read_bytes()
    path = tmp_path / "truncated.gguf"
    path.write_bytes(data[: int(len(data) * fraction)])
    with pytest.raises(ModelLoadError, match="truncated"):
        LlamaCppEngine(path, LlamaCppSettings(n_threads=THREADS))


def test_truncated_real_gguf_header(tmp_path, source_gguf):
    path = tmp_path / "head.gguf"
    with open(source_gguf, "rb") as f:
        path.write_bytes(f.read(100_000))  # inside the tokenizer metadata
    with pytest.raises(ModelLoadError) as info:
        LlamaCppEngine(path, LlamaCppSettings(n_threads=THREADS))
    assert str(path) in str(info.value)


def test_engine_basics(tiny_engine, tiny_qwen2):
    assert tiny_engine.name == "llamacpp"
    assert tiny_engine.n_ctx == 1024
    assert tiny_engine.architecture() == "qwen2"
    assert "<|im_start|>" in (tiny_engine.chat_template() or "")
    stats = tiny_engine.stats()
    assert stats.kv_total_cells == 1024 and stats.waiting == 0


def test_prompt_ids_outside_the_vocabulary_are_refused_not_fatal(tiny_engine):
    # llama.cpp aborts the whole process on such an id: it must be refused before queueing
    with pytest.raises(BadRequest, match="outside the vocabulary"):
        next(tiny_engine.generate([1, 2, 10**9], SamplingParams(max_tokens=2)))
    assert list(tiny_engine.generate([1, 2, 3], SamplingParams(max_tokens=2, temperature=0)))[-1].finish_reason
