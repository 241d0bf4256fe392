"""The two engines agree: identical tokenization, and greedy decoding on the same weights.

Tokenization: the llama.cpp engine (the GGUF's own vocabulary) and the transformers engine
(the tokenizer transformers converts from that GGUF) give the same ids on a multilingual
corpus, with and without special-token parsing; on the tiny models (fast) and the real one.

Greedy decoding (integration): llama.cpp runs the embedded Q4_K_M GGUF natively, transformers
runs the same GGUF dequantized to float32. The weights are the same numbers, but llama.cpp
rounds activations to 8 bits inside its quantized matmuls, so logits differ by a few
hundredths, and where the two best tokens are that close the engines may legitimately part.
The test therefore asserts, for the first 32 tokens:
- every token llama.cpp picks is, under the float32 model fed the same prefix, within
  TIE_LOGITS of that model's best token (the divergence is bounded);
- both engines produce the same tokens up to the first near-tie (top-2 margin < TIE_LOGITS) of
  the float32 model, and in fact everywhere unless such a near-tie exists.
Measured when written (2-core x86 CPU): all prompts agree on every token (up to 32, or to a
shared <|im_end|>); the largest teacher-forced gap was 0.0.

A tiny random Qwen3 GGUF with float32 weights goes the same way (fast, no integration mark):
converted through `gguf_file=`, it decodes greedily token for token as on llama.cpp.
"""

from __future__ import annotations

import os
import queue

import pytest

pytest.importorskip("torch", reason="the transformers extra is not installed")
pytest.importorskip("transformers", reason="the transformers extra is not installed")

import torch

from qwenkit.engines.base import SamplingParams
from qwenkit.engines.llamacpp import LlamaCppEngine, LlamaCppSettings

TIE_LOGITS = 0.25
TORCH_THREADS = int(os.environ.get("QWENKIT_TEST_TORCH_THREADS", "1"))
N_TOKENS = 32

CORPUS = [
    "Hello, world! How's it going? I'm fine, they'll see, we've done it.",
    "The quick brown fox jumps over the lazy dog. THE END.",
    "你好，世界！今天天气怎么样？我们去长城吧。",
    "机器学习（Machine Learning）是人工智能的一个分支。",
    "日本語のテキスト：東京は日本の首都です。カタカナ、ひらがな。",
    "한국어 문장입니다. 서울은 대한민국의 수도입니다.",
    "Русский текст: Москва — столица России.",
    "العربية: مرحبا بالعالم. עברית: שלום עולם.",
    "हिन्दी: नमस्ते दुनिया। ไทย: สวัสดีชาวโลก",
    "Ça va? Grüße aus Köln, naïve café, señor, smørrebrød — “quotes” … «guillemets»",
    "emoji 🎉🚀🔥 👍🏽 👩‍👩‍👧‍👦 🇨🇳🇺🇸 ❤️ ✨ 🤖",
    "def fib(n):\n    if n < 2:\n        return n\n    return fib(n - 1) + fib(n - 2)\n",
    'fn main() {\n    let v: Vec<i32> = (0..10).map(|x| x * x).collect();\n    println!("{:?}", v);\n}',
    "SELECT id, name FROM users WHERE age >= 18 ORDER BY name DESC LIMIT 10;",
    "<div class=\"box\">&nbsp;<a href='https://example.com/?q=1&r=2'>link</a></div>",
    "const f = async (x) => { await g(x); return x?.y ?? 0; } // 注释 ✓",
    "\t\tindented\n\n\n  trailing   spaces   \r\nwindows line\rcarriage",
    "numbers: 0 7 42 1234567890 3.14159 -2.5e-10 1,000,000 ½ ² ①",
    "math: ∑_{i=1}^{n} i² = n(n+1)(2n+1)/6, ∀x∈ℝ, x≥0 ⇒ √x ∈ ℝ",
    "Ｆｕｌｌｗｉｄｔｈ ＡＢＣ １２３ and e\u0301 (decomposed) vs é (composed)",
    "<|im_start|>system\nYou are helpful.<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n",
    '<tool_call>\n{"name": "get_weather", "arguments": {"city": "北京"}}\n</tool_call>',
    "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
    "",
    " ",
    "x",
]


def _check_tokenization(llama, hf, corpus):
    mismatches = []
    for text in corpus:
        for special in (True, False):
            a, b = llama.tokenize(text, special=special), hf.tokenize(text, special=special)
            if a != b:
                mismatches.append((text[:40], special, a[:12], b[:12]))
        ids = llama.tokenize(text)
        if llama.detokenize(ids) != hf.detokenize(ids):
            mismatches.append((text[:40], "detokenize"))
    assert not mismatches, mismatches


# ----- tiny models (fast) -----------------------------------------------------------------


@pytest.mark.parametrize("arch", ["qwen2", "qwen3"])
def test_tokenization_identical_on_tiny_models(arch, request):
    from qwenkit.engines.transformers import TransformersEngine, TransformersSettings

    gguf = request.getfixturevalue(f"tiny_{arch}")
    checkpoint = request.getfixturevalue(f"tiny_hf_{arch}")
    llama = LlamaCppEngine(gguf, LlamaCppSettings(n_ctx=256, n_threads=1))
    hf = TransformersEngine(checkpoint, TransformersSettings(n_ctx=256, n_parallel=1, n_threads=TORCH_THREADS))
    try:
        extra = (
            ["<think>\nreasoning\n</think>\n\nanswer", "<tool_response>\nok\n</tool_response>"]
            if arch == "qwen3"
            else []
        )
        _check_tokenization(llama, hf, CORPUS + extra)
        assert llama.eos_token_ids() >= hf.eos_token_ids()
    finally:
        llama.close()
        hf.close()


@pytest.fixture(scope="module")
def tiny_qwen3_f32(source_gguf, tiny_cache):
    from qwenkit.testing import tiny

    return tiny.tiny_gguf("qwen3", tiny_cache, source_gguf=source_gguf, dtype="f32")


def test_tiny_qwen3_gguf_on_both_engines(tiny_qwen3_f32):
    """A GGUF through `gguf_file=` (converted once, cached): float32 weights on both engines,
    so greedy decoding agrees token for token; a second load converts nothing."""
    from qwenkit.engines.transformers import TransformersEngine, TransformersSettings, convert
    from qwenkit.store.converted import is_converted

    settings = TransformersSettings(n_ctx=256, n_parallel=2, n_threads=TORCH_THREADS)
    hf = TransformersEngine(tiny_qwen3_f32, settings)
    llama = LlamaCppEngine(tiny_qwen3_f32, LlamaCppSettings(n_ctx=256, n_threads=1))
    try:
        assert hf.path == convert.converted_dir(tiny_qwen3_f32) and is_converted(hf.path)
        assert hf.architecture() == "qwen3" and hf.eos_token_ids() == llama.eos_token_ids()
        assert hf.chat_template() == llama.chat_template()
        params = SamplingParams(max_tokens=N_TOKENS, temperature=0.0)
        for user in ("Write a poem about the sea.", "你好"):
            prompt = llama.tokenize(f"<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n")
            a = [t for c in llama.generate(prompt, params) for t in c.token_ids]
            b = [t for c in hf.generate(prompt, params) for t in c.token_ids]
            assert a == b
        before, stamp = dict(convert.conversions), hf.path / "qwenkit-converted.json"
        mtime = stamp.stat().st_mtime_ns
        again = TransformersEngine(tiny_qwen3_f32, settings)
        again.close()
        assert convert.conversions == before and stamp.stat().st_mtime_ns == mtime
    finally:
        llama.close()
        hf.close()


# ----- the real model: Qwen2.5-Coder-0.5B-Instruct, Q4_K_M vs dequantized float32 ----------


@pytest.fixture(scope="module")
def real_pair(source_gguf, converted_source):
    import qwenkit
    from qwenkit.engines.transformers import convert

    before = dict(convert.conversions)
    model = qwenkit.load(
        "default", engine="transformers", n_ctx=1024, n_parallel=4, n_threads=TORCH_THREADS, progress=False
    )
    llama = LlamaCppEngine(source_gguf, LlamaCppSettings(n_ctx=1024, n_threads=2))
    try:
        yield model, llama, before
    finally:
        llama.close()
        model.close()


@pytest.mark.integration
def test_gguf_conversion_is_cached(real_pair, source_gguf, converted_source):
    from qwenkit.engines.transformers import convert

    model, _llama, before = real_pair
    assert model.engine.path == converted_source  # loading the GGUF used the converted checkpoint
    assert model.engine.source == source_gguf
    assert convert.conversions == before, "loading again must not convert again"
    stamp = converted_source / "qwenkit-converted.json"
    mtime = stamp.stat().st_mtime_ns
    assert convert.convert_gguf(source_gguf) == converted_source
    assert stamp.stat().st_mtime_ns == mtime and convert.conversions == before
    assert (converted_source / "model.safetensors").is_file() or list(converted_source.glob("model-*.safetensors"))


@pytest.mark.integration
def test_tokenization_identical_on_the_real_model(real_pair):
    model, llama, _ = real_pair
    _check_tokenization(llama, model.engine, CORPUS)
    assert llama.chat_template() == model.engine.chat_template()


def _chat(user: str) -> str:
    return (
        "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n"
        f"<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n"
    )


PARITY_PROMPTS = [
    "Write a Python function that checks whether a number is prime.",
    "What is the capital of France? Answer in one sentence.",
    "用一句话介绍长城。",
]


def _greedy_many(engine, prompts: list[list[int]]) -> list[list[int]]:
    """Greedy continuations of all prompts, submitted together (decoded as one batch)."""
    params = SamplingParams(max_tokens=N_TOKENS, temperature=0.0)
    queues = [queue.Queue() for _ in prompts]
    for q, ids in zip(queues, prompts, strict=False):
        engine.submit(ids, params, q.put)
    out = []
    for q in queues:
        ids = []
        while True:
            chunk = q.get(timeout=600)
            ids += chunk.token_ids
            if chunk.finish_reason:
                break
        out.append(ids)
    return out


@pytest.mark.integration
def test_greedy_parity_first_32_tokens(real_pair):
    model, llama, _ = real_pair
    hf = model.engine
    prompts = [llama.tokenize(_chat(p)) for p in PARITY_PROMPTS]
    assert prompts == [hf.tokenize(_chat(p)) for p in PARITY_PROMPTS]
    ours = _greedy_many(hf, prompts)
    report = []
    for prompt, text, b in zip(prompts, PARITY_PROMPTS, ours, strict=False):
        a = [
            t for c in llama.generate(prompt, SamplingParams(max_tokens=N_TOKENS, temperature=0.0)) for t in c.token_ids
        ]
        with torch.inference_mode():  # the float32 model, fed llama.cpp's tokens
            logits = hf.model(torch.tensor([prompt + a], device=hf.device)).logits[0, len(prompt) - 1 : -1].float()
        chosen = logits.gather(1, torch.tensor(a, device=logits.device)[:, None])[:, 0]
        gaps = logits.max(-1).values - chosen
        top2 = logits.topk(2, dim=-1).values
        margins = top2[:, 0] - top2[:, 1]
        ties = (margins < TIE_LOGITS).nonzero()
        first_tie = int(ties[0]) if ties.numel() else len(a)
        agree = next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))
        report.append(
            f"{text[:24]!r}: agree {agree}/{len(a)}, max gap {float(gaps.max()):.3f}, first near-tie {first_tie}"
        )
        assert float(gaps.max()) <= TIE_LOGITS, report[-1]
        assert agree >= min(first_tie, len(a)), report[-1]
        if agree == min(len(a), len(b)):
            assert len(a) == len(b), report[-1]  # both stopped at the same end-of-turn, or both at 32
    print("\n".join(report))
