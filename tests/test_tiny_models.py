"""Tiny random-weight Qwen GGUF fixtures (qwenkit.testing.tiny) load in llama.cpp and keep the
real Qwen tokenizer, special tokens and chat templates."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from qwenkit.testing import tiny

llama_cpp = pytest.importorskip("llama_cpp")
pytest.importorskip("gguf")

PROMPT = "<|im_start|>user\nhi<|im_end|>"
# strings tokenized identically by Qwen2.5 and Qwen3 (none contains the four renamed tokens)
SHARED_TEXTS = [
    PROMPT,
    "<|im_start|>system\nYou are helpful.<|im_end|>\n<|im_start|>assistant\n",
    "def f(x):\n    return x ** 2  # square\n",
    "Hello, world! 你好，世界。 ¿Qué tal?  \t 12345",
    '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>',
    "<|endoftext|><|fim_prefix|>a<|fim_suffix|>b<|fim_middle|>",
]
RENAMED = {"<tool_response>": 151665, "</tool_response>": 151666, "<think>": 151667, "</think>": 151668}


@pytest.fixture(scope="module")
def source_llm(source_gguf):
    return llama_cpp.Llama(model_path=str(source_gguf), vocab_only=True, verbose=False)


@pytest.fixture(scope="module")
def built(source_gguf, tmp_path_factory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("tiny")
    paths, timings = {}, {}
    for arch in ("qwen2", "qwen3"):
        t0 = time.perf_counter()
        paths[arch] = tiny.build_tiny_gguf(out / f"{arch}.gguf", arch=arch, source_gguf=source_gguf)
        t1 = time.perf_counter()
        llama_cpp.Llama(model_path=str(paths[arch]), n_ctx=512, verbose=False)
        t2 = time.perf_counter()
        timings[arch] = (t1 - t0, t2 - t1)
    for arch, (build_s, load_s) in timings.items():
        mb = paths[arch].stat().st_size / 1e6
        print(f"\ntiny {arch}: build {build_s:.2f}s, load {load_s:.2f}s, {mb:.0f} MB")
    built_timings.update(timings)
    return paths


built_timings: dict[str, tuple[float, float]] = {}


def load(path: Path):
    return llama_cpp.Llama(model_path=str(path), n_ctx=512, verbose=False)


@pytest.fixture(scope="module")
def llms(built):
    return {arch: load(p) for arch, p in built.items()}


@pytest.mark.parametrize("arch", ["qwen2", "qwen3"])
def test_arch_metadata(llms, arch):
    md = llms[arch].metadata
    assert md["general.architecture"] == arch
    assert md[f"{arch}.embedding_length"] == "64"
    assert md[f"{arch}.block_count"] == "2"
    assert md[f"{arch}.attention.head_count"] == "4"
    assert md[f"{arch}.attention.head_count_kv"] == "2"
    assert float(md[f"{arch}.rope.freq_base"]) == 1e6
    assert md["tokenizer.ggml.model"] == "gpt2"
    assert md["tokenizer.ggml.pre"] == "qwen2"
    assert md["tokenizer.ggml.eos_token_id"] == "151645"
    assert md["tokenizer.ggml.add_bos_token"] == "false"
    assert llms[arch].n_vocab() == 151936
    if arch == "qwen3":
        assert md["qwen3.attention.key_length"] == "16"


@pytest.mark.parametrize("arch", ["qwen2", "qwen3"])
def test_tokenization_matches_real_model(llms, source_llm, arch):
    llm = llms[arch]
    ids = llm.tokenize(PROMPT.encode(), add_bos=False, special=True)
    assert ids == [151644, 872, 198, 6023, 151645]
    for text in SHARED_TEXTS:
        for special in (True, False):
            want = source_llm.tokenize(text.encode(), add_bos=False, special=special)
            got = llm.tokenize(text.encode(), add_bos=False, special=special)
            assert got == want, (text, special)
    ids = source_llm.tokenize(SHARED_TEXTS[3].encode(), add_bos=False)
    assert llm.detokenize(ids) == SHARED_TEXTS[3].encode()
    assert llm.token_eos() == 151645


def test_qwen3_thinking_tokens_are_single_tokens(llms, source_llm):
    q3, q2 = llms["qwen3"], llms["qwen2"]
    for text, tid in RENAMED.items():
        for special in (True, False):  # user-defined tokens: matched even without special parsing
            assert q3.tokenize(text.encode(), add_bos=False, special=special) == [tid]
        assert q3.detokenize([tid]) == text.encode()
        # the Qwen2.5 vocabulary spells them with several ordinary tokens
        assert len(q2.tokenize(text.encode(), add_bos=False, special=True)) > 1
    ids = q3.tokenize(b"<think>\nok\n</think>\n\nHi", add_bos=False, special=False)
    assert ids[0] == 151667 and 151668 in ids


@pytest.mark.parametrize("arch", ["qwen2", "qwen3"])
def test_greedy_generation_is_deterministic(built, arch):
    prompt = PROMPT + "\n<|im_start|>assistant\n"
    runs = []
    for _ in range(2):
        llm = load(built[arch])
        out = llm.create_completion(prompt, max_tokens=12, temperature=0.0)
        runs.append((out["choices"][0]["text"], out["usage"]["completion_tokens"]))
    assert runs[0] == runs[1]
    assert runs[0][1] > 0


def test_chat_templates(built, llms, source_gguf, tmp_path):
    source_template = tiny.read_tokenizer_metadata(source_gguf)["tokenizer.chat_template"]
    assert llms["qwen2"].metadata["tokenizer.chat_template"] == source_template
    q3_template = llms["qwen3"].metadata["tokenizer.chat_template"]
    assert q3_template == tiny.official_template("qwen3")
    assert "enable_thinking" in q3_template and "<think>" in q3_template

    bare = tiny.build_tiny_gguf(tmp_path / "bare.gguf", arch="qwen3", source_gguf=source_gguf, chat_template="")
    assert "tokenizer.chat_template" not in load(bare).metadata
    custom = tiny.build_tiny_gguf(tmp_path / "c.gguf", arch="qwen2", source_gguf=source_gguf, chat_template="{{ 'x' }}")
    assert load(custom).metadata["tokenizer.chat_template"] == "{{ 'x' }}"


def test_bias_token_steers_greedy_output(source_gguf, tmp_path):
    think = tiny.build_tiny_gguf(tmp_path / "think.gguf", arch="qwen3", source_gguf=source_gguf, bias_token=151667)
    out = load(think).create_completion(PROMPT, max_tokens=5, temperature=0.0)
    assert out["choices"][0]["text"] == "<think>" * 5

    stop = tiny.build_tiny_gguf(tmp_path / "stop.gguf", arch="qwen2", source_gguf=source_gguf, bias_token=151645)
    out = load(stop).create_completion(PROMPT, max_tokens=5, temperature=0.0)
    assert out["choices"][0]["text"] == "" and out["choices"][0]["finish_reason"] == "stop"


def test_tiny_gguf_cache(source_gguf, tmp_path):
    a = tiny.tiny_gguf("qwen3", tmp_path, source_gguf=source_gguf)
    mtime = a.stat().st_mtime_ns
    t0 = time.perf_counter()
    assert tiny.tiny_gguf("qwen3", tmp_path, source_gguf=source_gguf) == a
    assert tiny.tiny_gguf("qwen3", tmp_path, source_gguf=source_gguf, seed=0, n_layer=2) == a
    assert time.perf_counter() - t0 < 0.5
    assert a.stat().st_mtime_ns == mtime
    b = tiny.tiny_gguf("qwen3", tmp_path, source_gguf=source_gguf, seed=1)
    c = tiny.tiny_gguf("qwen3", tmp_path, source_gguf=source_gguf, chat_template="")
    d = tiny.tiny_gguf("qwen2", tmp_path, source_gguf=source_gguf)
    assert len({a, b, c, d}) == 4
    assert sorted(p.name for p in tmp_path.glob("*.gguf")) == sorted(p.name for p in (a, b, c, d))
    assert "tokenizer.chat_template" not in load(c).metadata
    with pytest.raises(TypeError):
        tiny.tiny_gguf("qwen3", tmp_path, source_gguf=source_gguf, n_layers=3)


def test_build_and_load_are_fast(built):
    # generous bound (CI machines vary); typical numbers are well under a second each
    for arch, (build_s, load_s) in built_timings.items():
        assert build_s + load_s < 20, (arch, build_s, load_s)


def test_rejects_bad_arguments(source_gguf, tmp_path):
    with pytest.raises(ValueError, match="arch must be one of"):
        tiny.build_tiny_gguf(
            tmp_path / "x.gguf",
            arch="llama",
            source_gguf=source_gguf,  # type: ignore[arg-type]
        )
    with pytest.raises(ValueError, match="bias_token 1000000 is outside the vocabulary"):
        tiny.build_tiny_gguf(tmp_path / "x.gguf", arch="qwen3", source_gguf=source_gguf, bias_token=10**6)
