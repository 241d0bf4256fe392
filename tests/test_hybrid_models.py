"""Hybrid-attention models (Qwen3.5 dense, Qwen3.5-MoE, Qwen3-Next) on llama.cpp and transformers.

Every check runs on each tiny random model (`hybrid_arch`): llama.cpp's greedy output equals
transformers' own `generate` (fp32 GGUF: per-step logprobs within 1e-3); and whatever the caches
reuse (a follow-up turn, `n` choices sharing a prefill, a thinking budget's forced close, 8
concurrent requests sharing a system prompt) gives exactly the tokens the same request gives
alone on a fresh engine, with nothing cached. A recurrent state cannot be cut back, so a wrong
reuse shows at once in the random models' tokens.
"""

from __future__ import annotations

import os
import queue

import pytest
from engine_helpers import ids_of, run

from qwenkit.chat.budget import ThinkingBudget
from qwenkit.chat.template import ChatTemplate
from qwenkit.engines.base import Chunk, SamplingParams
from qwenkit.engines.llamacpp import LlamaCppEngine, LlamaCppSettings

THREADS = int(os.environ.get("QWENKIT_TEST_THREADS", "2"))
TURN_START = "<|im_start|>assistant\n"
SYSTEM = "<|im_start|>system\nYou are a careful assistant who answers briefly.<|im_end|>\n"
PROMPTS = [
    SYSTEM + "<|im_start|>user\nTell me a story.<|im_end|>\n" + TURN_START + "<think>\n",
    "<|im_start|>user\n你好，世界<|im_end|>\n" + TURN_START,
    "def fib(n):",
]
MAX_TOKENS = 12


def llama(path, n_parallel=1):
    return LlamaCppEngine(
        path, LlamaCppSettings(n_ctx=1024, n_threads=THREADS, n_parallel=n_parallel, turn_start=TURN_START)
    )


def final(chunks: list[Chunk]) -> Chunk:
    assert chunks[-1].finish_reason is not None
    return chunks[-1]


def alone(path, prompt: list[int], controller_factory=None, **params) -> list[int]:
    """The request's tokens on a fresh engine: nothing cached, nothing shared."""
    engine = llama(path)
    try:
        return ids_of(run(engine, prompt, controller_factory() if controller_factory else None, **params))
    finally:
        engine.close()


def together(engine, prompts: list[list[int]], *, first: int | None = None, **params) -> list[list[Chunk]]:
    """`prompts` run side by side (with `first`, the rest join once the first ones stream); each
    one's chunks."""
    got: queue.Queue[tuple[int, Chunk]] = queue.Queue()

    def submit(i: int) -> None:
        engine.submit(prompts[i], SamplingParams(**params), lambda c: got.put((i, c)))

    first = len(prompts) if first is None else first
    for i in range(first):
        submit(i)
    out: list[list[Chunk]] = [[] for _ in prompts]
    for _ in range(len(prompts) * (params["max_tokens"] + 2)):
        i, chunk = got.get(timeout=120)
        out[i].append(chunk)
        if first < len(prompts):  # the running batch has started: the others join it
            for j in range(first, len(prompts)):
                submit(j)
            first = len(prompts)
        if all(cs and cs[-1].finish_reason is not None for cs in out):
            break
    return out


# ----- llama.cpp against transformers ---------------------------------------------------------


def test_llamacpp_greedy_equals_transformers_generate(tiny_hybrid_gguf, tiny_hf_hybrid):
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_hf_hybrid, dtype=torch.float32)
    engine = llama(tiny_hybrid_gguf)
    try:
        assert engine.model.meta("general.architecture") in ("qwen35", "qwen35moe", "qwen3next")
        arch = engine.model.meta("general.architecture")
        assert engine.model.meta(f"{arch}.nextn_predict_layers") == "1"  # the MTP layer loads, unused
        for text in PROMPTS:
            prompt = engine.tokenize(text)
            out = model.generate(
                torch.tensor([prompt]),
                max_new_tokens=MAX_TOKENS,
                do_sample=False,
                output_scores=True,
                return_dict_in_generate=True,
                eos_token_id=[],
            )
            expected = out.sequences[0, len(prompt) :].tolist()
            chunks = run(engine, prompt, max_tokens=MAX_TOKENS, temperature=0.0, logprobs=0, stop_token_ids=())
            assert ids_of(chunks) == expected, text
            got = [lp.logprob for c in chunks for lp in c.logprobs or []]
            want = [torch.log_softmax(s[0].double(), -1)[t].item() for s, t in zip(out.scores, expected, strict=True)]
            assert max(abs(a - b) for a, b in zip(got, want, strict=True)) < 1e-3
    finally:
        engine.close()


# ----- llama.cpp: every reuse gives the tokens of a request alone -----------------------------


@pytest.fixture
def engine4(tiny_hybrid_gguf):
    engine = llama(tiny_hybrid_gguf, n_parallel=4)
    yield engine
    engine.close()


def test_llamacpp_follow_up_turn_restores_a_checkpoint(engine4, tiny_hybrid_gguf):
    turn1 = engine4.tokenize(PROMPTS[0])
    first = run(engine4, turn1, max_tokens=MAX_TOKENS, temperature=0.0)
    assert ids_of(first) == alone(tiny_hybrid_gguf, turn1, max_tokens=MAX_TOKENS, temperature=0.0)
    assert final(first).cached_prompt_tokens == 0
    # the next turn re-renders the answer without its reasoning: it leaves the cache where the
    # assistant turn opened, two tokens before turn 1's prompt ended (`<think>`, "\n")
    opened = PROMPTS[0][: -len("<think>\n")]
    turn2 = engine4.tokenize(opened + "Once upon a time.<|im_end|>\n<|im_start|>user\nMore.<|im_end|>\n" + TURN_START)
    second = run(engine4, turn2, max_tokens=MAX_TOKENS, temperature=0.0)
    assert ids_of(second) == alone(tiny_hybrid_gguf, turn2, max_tokens=MAX_TOKENS, temperature=0.0)
    assert final(second).cached_prompt_tokens == len(engine4.tokenize(opened))
    # the very same prompt again: back to the checkpoint one token before its end
    again = run(engine4, turn2, max_tokens=MAX_TOKENS, temperature=0.0)
    assert ids_of(again) == ids_of(second)
    assert final(again).cached_prompt_tokens == len(turn2) - 1


def test_llamacpp_unrelated_prompt_reuses_nothing(engine4, tiny_hybrid_gguf):
    run(engine4, PROMPTS[0], max_tokens=MAX_TOKENS, temperature=0.0)
    # shares the system prompt with the cache, but no checkpoint lies inside it
    other = engine4.tokenize(SYSTEM + "<|im_start|>user\nAnother question<|im_end|>\n" + TURN_START)
    chunks = run(engine4, other, max_tokens=MAX_TOKENS, temperature=0.0)
    assert ids_of(chunks) == alone(tiny_hybrid_gguf, other, max_tokens=MAX_TOKENS, temperature=0.0)
    assert final(chunks).cached_prompt_tokens == 0


def test_llamacpp_n_choices_share_the_prefill(engine4, tiny_hybrid_gguf):
    from engine_helpers import choices

    prompt = engine4.tokenize(PROMPTS[1])
    got = choices(engine4, prompt, n=3, max_tokens=MAX_TOKENS, temperature=0.0)
    expected = alone(tiny_hybrid_gguf, prompt, max_tokens=MAX_TOKENS, temperature=0.0)
    assert [ids_of(got[i]) for i in range(3)] == [expected] * 3
    assert sorted(final(got[i]).cached_prompt_tokens for i in range(3)) == [0, len(prompt) - 1, len(prompt) - 1]


def budget_factory(engine):
    think_open, think_close = engine.tokenize("<think>")[0], engine.tokenize("</think>")[0]
    closing = engine.tokenize("\n\nConsidering the limited time, I have to answer now.\n</think>\n\n")

    def make():
        return ThinkingBudget(
            budget=4,
            max_tokens=40,
            closing=closing,
            think_open=think_open,
            think_close=think_close,
            starts_in_thinking=True,
            token_text=lambda t: engine.detokenize([t]),
        )

    return make, closing


def test_llamacpp_thinking_budget_forced_close(engine4, tiny_hybrid_gguf):
    make, closing = budget_factory(engine4)
    prompt = engine4.tokenize(PROMPTS[0])
    run(engine4, prompt, max_tokens=4, temperature=0.0)  # a cache to reuse
    chunks = run(engine4, prompt, make(), max_tokens=40, temperature=0.0)
    tokens = ids_of(chunks)
    assert any(c.forced for c in chunks)
    assert closing[-3:] == [t for c in chunks if c.forced for t in c.token_ids][-3:]
    assert tokens == alone(tiny_hybrid_gguf, prompt, make, max_tokens=40, temperature=0.0)
    assert final(chunks).cached_prompt_tokens == len(prompt) - 1


def test_llamacpp_eight_concurrent_requests_sharing_a_system_prompt(tiny_hybrid_gguf):
    engine = llama(tiny_hybrid_gguf, n_parallel=8)
    try:
        warm = engine.tokenize(SYSTEM + "<|im_start|>user\nwarm up<|im_end|>\n" + TURN_START)
        run(engine, warm, max_tokens=4, temperature=0.0)
        prompts = [
            engine.tokenize(SYSTEM + f"<|im_start|>user\nQuestion {i}: {'why ' * i}?<|im_end|>\n" + TURN_START)
            for i in range(8)
        ]
        got = together(engine, prompts, max_tokens=MAX_TOKENS, temperature=0.0)
        for prompt, chunks in zip(prompts, got, strict=True):
            assert ids_of(chunks) == alone(tiny_hybrid_gguf, prompt, max_tokens=MAX_TOKENS, temperature=0.0)
            assert final(chunks).cached_prompt_tokens == 0  # no checkpoint inside the system prompt
        # each again: its own slot's checkpoint one token before the end
        again = together(engine, prompts, max_tokens=MAX_TOKENS, temperature=0.0)
        assert [ids_of(c) for c in again] == [ids_of(c) for c in got]
        # each from a checkpoint one token before its end (its own slot's, or copied from it)
        cached = [final(c).cached_prompt_tokens for c in again]
        assert all(n in (0, len(p) - 1) for n, p in zip(cached, prompts, strict=True)) and any(cached)
    finally:
        engine.close()


def test_llamacpp_five_turn_thinking_conversation_prefills_only_what_is_new(engine4, tiny_hybrid_gguf):
    template = ChatTemplate(engine4.chat_template() or "", name="tiny")
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Question 1?"}]
    previous_prompt: list[int] | None = None
    for turn in range(5):
        text = template.render(messages, add_generation_prompt=True)
        prompt = engine4.tokenize(text)
        chunks = run(engine4, prompt, max_tokens=MAX_TOKENS, temperature=0.0)
        assert ids_of(chunks) == alone(tiny_hybrid_gguf, prompt, max_tokens=MAX_TOKENS, temperature=0.0)
        cached = final(chunks).cached_prompt_tokens
        if previous_prompt is None:
            assert cached == 0
        else:
            # at most the last answer as re-rendered plus the new user message is prefilled
            before = template.render(messages[:-2], add_generation_prompt=False) + TURN_START
            assert text.startswith(before)
            assert cached == len(engine4.tokenize(before))
        # the model thought (random tokens), then answered; the history keeps the answer only
        messages += [
            {
                "role": "assistant",
                "content": f"Answer {turn + 1}.",
                "reasoning_content": engine4.detokenize(ids_of(chunks)),
            },
            {"role": "user", "content": f"Question {turn + 2}?"},
        ]
        previous_prompt = prompt
    assert len(messages) == 12


# ----- transformers: batched, prefix cache off for recurrent layers --------------------------


def hf_engine(path, n_parallel=4):
    from qwenkit.engines.transformers import TransformersEngine, TransformersSettings

    return TransformersEngine(path, TransformersSettings(n_threads=THREADS, n_ctx=512, n_parallel=n_parallel))


def hf_alone(path, prompt, controller_factory=None, **params) -> list[int]:
    engine = hf_engine(path, n_parallel=1)
    try:
        return ids_of(run(engine, prompt, controller_factory() if controller_factory else None, **params))
    finally:
        engine.close()


@pytest.fixture
def hf4(tiny_hf_hybrid):
    engine = hf_engine(tiny_hf_hybrid)
    yield engine
    engine.close()


def test_transformers_greedy_equals_generate_and_says_its_prefix_cache_is_off(hf4, tiny_hf_hybrid, tiny_hybrid_gguf):
    engine = llama(tiny_hybrid_gguf)
    try:
        for text in PROMPTS:
            prompt = hf4.tokenize(text)
            expected = ids_of(run(engine, prompt, max_tokens=MAX_TOKENS, temperature=0.0))
            assert ids_of(run(hf4, prompt, max_tokens=MAX_TOKENS, temperature=0.0)) == expected
    finally:
        engine.close()
    assert hf4.stats().prefix_cache_off is not None and "recurrent" in hf4.stats().prefix_cache_off


def test_transformers_reuse_gives_the_tokens_of_a_request_alone(hf4, tiny_hf_hybrid):
    from engine_helpers import choices

    turn1 = hf4.tokenize(PROMPTS[0])
    run(hf4, turn1, max_tokens=MAX_TOKENS, temperature=0.0)
    turn2 = hf4.tokenize(
        PROMPTS[0][: -len("<think>\n")] + "Fine.<|im_end|>\n<|im_start|>user\nMore.<|im_end|>\n" + TURN_START
    )
    follow = run(hf4, turn2, max_tokens=MAX_TOKENS, temperature=0.0)
    assert ids_of(follow) == hf_alone(tiny_hf_hybrid, turn2, max_tokens=MAX_TOKENS, temperature=0.0)
    assert final(follow).cached_prompt_tokens == 0  # honest: nothing was reused

    got = choices(hf4, turn1, n=3, max_tokens=MAX_TOKENS, temperature=0.0)
    expected = hf_alone(tiny_hf_hybrid, turn1, max_tokens=MAX_TOKENS, temperature=0.0)
    assert [ids_of(got[i]) for i in range(3)] == [expected] * 3

    make, _ = budget_factory(hf4)
    forced = run(hf4, turn1, make(), max_tokens=40, temperature=0.0)
    assert any(c.forced for c in forced)
    assert ids_of(forced) == hf_alone(tiny_hf_hybrid, turn1, make, max_tokens=40, temperature=0.0)


def test_transformers_eight_concurrent_requests_sharing_a_system_prompt(tiny_hf_hybrid):
    engine = hf_engine(tiny_hf_hybrid, n_parallel=8)
    try:
        prompts = [
            engine.tokenize(SYSTEM + f"<|im_start|>user\nQuestion {i}: {'why ' * i}?<|im_end|>\n" + TURN_START)
            for i in range(8)
        ]
        got = together(engine, prompts, first=3, max_tokens=MAX_TOKENS, temperature=0.0)
        for prompt, chunks in zip(prompts, got, strict=True):
            assert ids_of(chunks) == hf_alone(tiny_hf_hybrid, prompt, max_tokens=MAX_TOKENS, temperature=0.0)
            assert final(chunks).cached_prompt_tokens == 0
    finally:
        engine.close()


def test_llamacpp_lora_on_a_hybrid_model_equals_peft(tiny_hybrid_gguf, tiny_hf_hybrid, tmp_path):
    """llama.cpp applies LoRA on these architectures too (attention and linear-attention layers)."""
    import subprocess
    import sys

    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from qwenkit.engines.llamacpp import vendor

    model = AutoModelForCausalLM.from_pretrained(tiny_hf_hybrid, dtype=torch.float32)
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "out_proj"]))
    torch.manual_seed(1)
    with torch.no_grad():  # peft starts B at zero: an adapter that changes nothing would prove nothing
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.normal_(0.0, 0.2)
    peft_model.save_pretrained(tmp_path / "adapter")
    script = vendor.source() / "convert_lora_to_gguf.py"
    args = ["--base", str(tiny_hf_hybrid), "--outtype", "f32", "--outfile", str(tmp_path / "lora.gguf")]
    done = subprocess.run(
        [sys.executable, str(script), *args, str(tmp_path / "adapter")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    engine = llama(tiny_hybrid_gguf)
    try:
        engine.load_adapter("a", tmp_path / "lora.gguf")
        prompt = engine.tokenize(PROMPTS[1])
        params = SamplingParams(max_tokens=MAX_TOKENS, temperature=0.0)
        base = ids_of(engine.generate(prompt, params))
        adapted = ids_of(engine.generate(prompt, params, adapters=(("a", 1.0),)))
        expected = peft_model.generate(
            torch.tensor([prompt]), max_new_tokens=MAX_TOKENS, do_sample=False, eos_token_id=[]
        )
        assert adapted == expected[0, len(prompt) :].tolist()
        assert adapted != base
    finally:
        engine.close()


def test_transformers_loads_a_conditional_generation_checkpoint_as_its_text_model(
    tiny_hf_hybrid, hybrid_arch, tmp_path
):
    """Qwen3.5's released checkpoints are vision-language (`Qwen3_5ForConditionalGeneration`):
    without images the engine runs their language half, the same tokens as the text model."""
    import torch
    from transformers import (
        AutoConfig,
        Qwen3_5Config,
        Qwen3_5ForConditionalGeneration,
        Qwen3_5MoeConfig,
        Qwen3_5MoeForConditionalGeneration,
    )

    if hybrid_arch == "qwen3next":
        pytest.skip("Qwen3-Next is a text model")
    config_cls, model_cls = (
        (Qwen3_5Config, Qwen3_5ForConditionalGeneration)
        if hybrid_arch == "qwen35"
        else (Qwen3_5MoeConfig, Qwen3_5MoeForConditionalGeneration)
    )
    vision = dict(depth=1, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64, patch_size=16)
    config = config_cls(text_config=AutoConfig.from_pretrained(tiny_hf_hybrid).to_dict(), vision_config=vision)
    torch.manual_seed(0)
    model = model_cls(config).eval()
    model.save_pretrained(tmp_path)
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "generation_config.json"):
        (tmp_path / name).write_bytes((tiny_hf_hybrid / name).read_bytes())
    engine = hf_engine(tmp_path, n_parallel=1)
    try:
        assert not engine.vision()
        prompt = engine.tokenize(PROMPTS[0])
        expected = model.generate(torch.tensor([prompt]), max_new_tokens=MAX_TOKENS, do_sample=False, eos_token_id=[])
        got = ids_of(run(engine, prompt, max_tokens=MAX_TOKENS, temperature=0.0, stop_token_ids=()))
        assert got == expected[0, len(prompt) :].tolist()
    finally:
        engine.close()
