"""The Python API: `qwenkit.load`, `Model.chat` (whole and streamed), thinking, tools, `TurnDecoder`."""

from __future__ import annotations

import dataclasses
import json
import os

import pytest

import qwenkit
from qwenkit.engines.base import Chunk, SamplingParams
from qwenkit.errors import BadRequest, ModelLoadError, ModelNotFound, QwenkitError
from qwenkit.results import ChatResult
from qwenkit.testing import tiny
from qwenkit.turn import PreparedTurn, TurnDecoder

THREADS = int(os.environ.get("QWENKIT_TEST_THREADS", "2"))
THINK_OPEN, THINK_CLOSE = 151667, 151668
EMPTY_THINK = "<think>\n\n</think>\n\n"

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the current weather for a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "description": "City name"}},
            "required": ["city"],
        },
    },
}


def load(path, **kw):
    return qwenkit.load(str(path), n_threads=THREADS, n_ctx=kw.pop("n_ctx", 1024), progress=False, **kw)


def collect(deltas, limit=2000):
    out = []
    for delta in deltas:
        out.append(delta)
        assert len(out) <= limit
    return out


def check_final(deltas):
    """Only the last delta finishes, and it carries the whole result."""
    assert deltas and deltas[-1].finish_reason is not None and deltas[-1].result is not None
    assert all(d.finish_reason is None and d.result is None for d in deltas[:-1])
    return deltas[-1].result


@pytest.fixture(scope="module")
def real_model(source_gguf):
    model = qwenkit.load("default", n_threads=THREADS, n_ctx=2048, progress=False)
    yield model
    model.close()


@pytest.fixture(scope="module")
def qwen3(tiny_qwen3):
    model = load(tiny_qwen3)
    yield model
    model.close()


# ----- real model --------------------------------------------------------------------------


@pytest.mark.integration
def test_chat_with_a_string_and_with_messages(real_model):
    assert real_model.name == "qwen2.5-coder-0.5b-instruct"
    assert real_model.architecture == "qwen2"
    result = real_model.chat("Say hello in one word.", max_tokens=8, temperature=0)
    assert isinstance(result, ChatResult)
    assert result.content.strip(" .!").lower() == "hello"  # greedy: "Hello"
    assert result.reasoning is None and result.tool_calls == []
    assert result.finish_reason in ("stop", "length")
    assert result.usage.prompt_tokens == len(real_model.prepare("Say hello in one word.").prompt)
    assert 1 <= result.usage.completion_tokens <= 8

    messages = [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "What is 2+2? Answer with a number."},
        {"role": "assistant", "content": "4"},
        {"role": "user", "content": "And 3+3? Answer with a number."},
    ]
    prompt_text = real_model.engine.detokenize(real_model.prepare(messages).prompt)
    assert "You are terse." in prompt_text and "You are Qwen" not in prompt_text
    assert prompt_text.endswith("<|im_start|>assistant\n")
    result = real_model.chat(messages, max_tokens=6, temperature=0)
    assert "6" in result.content
    assert result.as_message()["role"] == "assistant"


@pytest.mark.integration
def test_stream_deltas_join_to_the_whole_result(real_model):
    prompt = "Write a Python function that returns the square of x."
    options = dict(max_tokens=16, temperature=0)
    # the first run leaves the prompt in the prefix cache; the next two then take the same path
    # (a cold and a cached prompt may differ at near ties, see test_engine_llamacpp)
    real_model.chat(prompt, **options)
    whole = real_model.chat(prompt, **options)
    deltas = collect(real_model.chat(prompt, stream=True, **options))
    result = check_final(deltas)
    streamed = "".join(d.content for d in deltas)
    assert streamed == result.content
    assert streamed == whole.content
    assert result.finish_reason == whole.finish_reason
    assert result.usage.completion_tokens == whole.usage.completion_tokens
    assert len([d for d in deltas if d.content]) > 3  # it really streamed
    # accounting
    assert result.usage.prompt_tokens == len(real_model.prepare(prompt).prompt)
    assert 1 <= result.usage.completion_tokens <= 16
    assert result.usage.total_tokens == result.usage.prompt_tokens + result.usage.completion_tokens
    assert result.usage.reasoning_tokens == 0
    t = result.timings  # more than 3 streamed deltas: a first token, then decoding after it
    assert 0 < t.ttft_s < t.total_s
    decode_s = t.total_s - t.ttft_s
    assert t.decode_tokens_per_s == pytest.approx((result.usage.completion_tokens - 1) / decode_s, rel=1e-6)
    assert t.decode_tps == t.decode_tokens_per_s


@pytest.mark.integration
def test_tool_call_with_the_real_model(real_model):
    question = "What is the weather in Paris right now? Use the get_weather tool."
    turn = real_model.prepare(question, tools=[WEATHER_TOOL], max_tokens=32, temperature=0)
    assert turn.tool_format == "hermes"
    prompt_text = real_model.engine.detokenize(turn.prompt)
    assert "<tools>" in prompt_text and '"get_weather"' in prompt_text
    chunks = list(real_model.engine.generate(turn.prompt, turn.params))
    raw = "".join(c.text for c in chunks)
    decoder = real_model.decoder(turn)
    deltas = [decoder.feed(chunk) for chunk in chunks]
    result = check_final(deltas)
    expected = decoder.parser.parse(raw)
    assert [c.name for c in result.tool_calls] == [c.name for c in expected.tool_calls]
    if "<tool_call>" in raw and expected.tool_calls:
        # the model called: the call is parsed out of the content
        assert result.finish_reason == "tool_calls"
        assert "<tool_call>" not in result.content
        for call in result.tool_calls:
            assert call.name == "get_weather"
            assert isinstance(json.loads(call.arguments), dict)
    else:
        # the 0.5B Coder model often answers with the bare JSON, without the <tool_call> tags:
        # that is text, not a call
        assert result.tool_calls == []
        assert result.finish_reason in ("stop", "length")
        assert result.content == expected.content
    # Model.chat goes the same way
    assert real_model.chat(question, tools=[WEATHER_TOOL], max_tokens=32, temperature=0).finish_reason in (
        "tool_calls",
        "stop",
        "length",
    )


# ----- tiny Qwen3: thinking ----------------------------------------------------------------


def test_thinking_switches_in_the_prompt(qwen3):
    assert qwen3.architecture == "qwen3"
    detok = qwen3.engine.detokenize
    on = qwen3.prepare("hi")
    assert on.thinking and on.starts_in_thinking
    assert detok(on.prompt).endswith("<|im_start|>assistant\n")
    assert (on.params.temperature, on.params.top_p, on.params.top_k) == (0.6, 0.95, 20)

    off = qwen3.prepare("hi", think=False)
    assert not off.thinking and not off.starts_in_thinking
    assert detok(off.prompt).endswith("<|im_start|>assistant\n" + EMPTY_THINK)
    assert detok(off.prompt).count("<think>") == 1
    assert (off.params.temperature, off.params.top_p) == (0.7, 0.8)
    assert THINK_OPEN in off.prompt and THINK_CLOSE in off.prompt  # single tokens in Qwen3

    soft = qwen3.prepare("hi /no_think")
    assert not soft.thinking and detok(soft.prompt).endswith(EMPTY_THINK)
    assert detok(qwen3.prepare("hi", think=True).prompt).endswith("<|im_start|>assistant\n")


def test_thinking_is_separated_and_counted(qwen3):
    # sample <think> first (logit bias), then force the rest of a scripted turn
    script = "\nLet me add 2 and 2.\n</think>\n\nThe answer is 4."
    forced = qwen3.engine.tokenize(script)
    assert forced.count(THINK_CLOSE) == 1
    turn = qwen3.prepare("What is 2+2?", max_tokens=512, logit_bias={THINK_OPEN: 100.0})
    assert turn.starts_in_thinking
    # end right after the script (the engine's limit; the turn keeps room to think)
    turn = dataclasses.replace(turn, params=dataclasses.replace(turn.params, max_tokens=1 + len(forced)))

    class Script:
        def after_token(self, generated):
            return forced if len(generated) == 1 else ()

    decoder = qwen3.decoder(turn)
    deltas = collect(decoder.feed(c) for c in qwen3.engine.generate(turn.prompt, turn.params, Script()))
    result = check_final(deltas)
    assert result.reasoning == "Let me add 2 and 2."
    assert result.content == "The answer is 4."
    assert "".join(d.reasoning for d in deltas) == result.reasoning
    assert "".join(d.content for d in deltas) == result.content
    assert result.finish_reason == "length"
    assert result.usage.completion_tokens == 1 + len(forced)
    # <think>, the reasoning, and </think> itself
    assert result.usage.reasoning_tokens == 1 + forced.index(THINK_CLOSE) + 1
    assert result.usage.reasoning_tokens < result.usage.completion_tokens


def test_chat_on_a_model_that_keeps_thinking(source_gguf, tiny_cache):
    # a model that writes <think> at every step never closes its reasoning by itself; whatever
    # closes it (the thinking budget's forced tokens) or not, the split and the count follow the
    # tokens: reasoning up to the first </think>, the answer after it
    model = load(tiny.tiny_gguf("qwen3", tiny_cache, source_gguf=source_gguf, bias_token=THINK_OPEN))
    try:
        turn = model.prepare("hi", max_tokens=120)
        assert turn.thinking and turn.starts_in_thinking
        decoder = model.decoder(turn)
        chunks = list(model.engine.generate(turn.prompt, turn.params, model.controller(turn)))
        deltas = [decoder.feed(c) for c in chunks]
        result = check_final(deltas)
        ids = [t for c in chunks for t in c.token_ids]
        raw = "".join(c.text for c in chunks)
        assert ids[0] == THINK_OPEN and raw.startswith("<think>")
        assert result.finish_reason == "length" and result.usage.completion_tokens == len(ids) == 120
        if THINK_CLOSE in ids:
            head, tail = raw[len("<think>") :].split("</think>", 1)
            assert result.reasoning == head.strip("\n")
            assert result.content == tail.lstrip("\n")
            assert result.usage.reasoning_tokens == ids.index(THINK_CLOSE) + 1
        else:
            assert result.content == "" and result.reasoning == raw[len("<think>") :].lstrip("\n")
            assert result.usage.reasoning_tokens == len(ids)
        assert "".join(d.reasoning for d in deltas) == (result.reasoning or "")
        assert "".join(d.content for d in deltas) == result.content
        # Model.chat takes the same path
        again = model.chat("hi", max_tokens=120)
        assert again.usage.cached_prompt_tokens == len(turn.prompt) - 1  # the whole prompt but one token
        again.usage.cached_prompt_tokens = result.usage.cached_prompt_tokens
        assert (again.reasoning, again.content, again.usage) == (result.reasoning, result.content, result.usage)
    finally:
        model.close()


def test_stream_equals_whole_on_tiny_qwen3(qwen3):
    for think in (None, False):
        whole = qwen3.chat("Tell me a story.", think=think, max_tokens=20, temperature=0)
        deltas = collect(qwen3.chat("Tell me a story.", think=think, max_tokens=20, temperature=0, stream=True))
        result = check_final(deltas)
        assert "".join(d.content for d in deltas) == result.content == whole.content
        assert "".join(d.reasoning for d in deltas) == (result.reasoning or "") == (whole.reasoning or "")
        assert (result.usage.prompt_tokens, result.usage.completion_tokens, result.usage.reasoning_tokens) == (
            whole.usage.prompt_tokens,
            whole.usage.completion_tokens,
            whole.usage.reasoning_tokens,
        )  # cache hits may differ
        assert result.usage.completion_tokens == 20


def test_seeded_chat_is_reproducible(qwen3):
    a = qwen3.chat("hi", max_tokens=12, seed=42)
    b = qwen3.chat("hi", max_tokens=12, seed=42)
    assert (a.content, a.reasoning) == (b.content, b.reasoning)


def test_stop_given_as_one_string(qwen3):
    whole = qwen3.chat("Tell me a story.", think=False, max_tokens=20, temperature=0).content
    stop = whole[6:10]
    assert len(stop) == 4 and len(set(stop)) > 1
    assert qwen3.prepare("hi", stop=stop).params.stop == (stop,)
    assert qwen3.prepare("hi", stop=[stop, "x"]).params.stop == (stop, "x")
    assert qwen3.prepare("hi", stop_token_ids=7).params.stop_token_ids == (7,)
    result = qwen3.chat("Tell me a story.", think=False, max_tokens=20, temperature=0, stop=stop)
    assert result.finish_reason == "stop"
    assert result.content == whole[: whole.find(stop)]


def test_leaving_a_stream_early_cancels_the_request(qwen3):
    requests = []
    submit = qwen3.engine.submit

    def recording_submit(*args, **kwargs):
        requests.append(submit(*args, **kwargs))
        return requests[-1]

    qwen3.engine.submit = recording_submit
    try:
        deltas = qwen3.chat("Tell me a story.", think=False, max_tokens=900, temperature=0, stream=True)
        for _, _delta in zip(range(3), deltas, strict=False):
            pass
        assert len(requests) == 1 and not requests[0].cancelled
        deltas.close()
        assert requests[0].cancelled
    finally:
        del qwen3.engine.submit
    # the single slot is free again
    assert qwen3.chat("hi", think=False, max_tokens=3).usage.completion_tokens == 3


# ----- template fallback -------------------------------------------------------------------


def test_gguf_without_template_falls_back_to_official_qwen2(source_gguf, tiny_cache):
    model = load(tiny.tiny_gguf("qwen2", tiny_cache, source_gguf=source_gguf, chat_template=""))
    try:
        assert model.engine.chat_template() is None
        assert model.template.name == "qwen2.5"
        text = model.engine.detokenize(model.prepare("hi").prompt)
        assert text == (
            "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n"
            "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
        )
        assert model.chat("hi", max_tokens=3, temperature=0).usage.completion_tokens == 3
    finally:
        model.close()


def test_gguf_without_template_falls_back_to_official_qwen3(source_gguf, tiny_cache):
    model = load(tiny.tiny_gguf("qwen3", tiny_cache, source_gguf=source_gguf, chat_template=""))
    try:
        assert model.engine.chat_template() is None
        assert model.template.name == "qwen3"
        assert model.template.supports_thinking
        text = model.engine.detokenize(model.prepare("hi", think=False).prompt)
        assert text == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n" + EMPTY_THINK
    finally:
        model.close()


# ----- errors ------------------------------------------------------------------------------


def test_bad_requests(qwen3):
    with pytest.raises(BadRequest):
        qwen3.chat([], max_tokens=3)
    with pytest.raises(BadRequest):
        qwen3.chat("hi", max_tokens=0)
    with pytest.raises(BadRequest):
        qwen3.chat("hi", top_p=2.0)
    with pytest.raises(BadRequest):
        qwen3.chat("hi", temperature=float("nan"))
    with pytest.raises(BadRequest, match="unknown sampling parameter"):
        qwen3.chat("hi", temprature=0.5)
    with pytest.raises(BadRequest, match="logit_bias"):
        qwen3.chat("hi", max_tokens=2, logit_bias={10**7: 1.0})
    with pytest.raises(BadRequest):
        qwen3.chat([{"role": "wizard", "content": "hi"}])
    with pytest.raises(BadRequest, match="context"):
        qwen3.chat("word " * 1100, max_tokens=2)
    # a streamed request fails when iterated, and the model still works afterwards
    with pytest.raises(BadRequest):
        collect(qwen3.chat("word " * 1100, max_tokens=2, stream=True))
    assert qwen3.chat("hi", max_tokens=2).usage.completion_tokens == 2


def test_chat_after_close_is_an_error_not_a_crash(tiny_qwen2):
    with load(tiny_qwen2) as model:
        assert model.chat("hi", max_tokens=2).usage.completion_tokens == 2
    with pytest.raises(QwenkitError, match="closed"):
        model.chat("hi", max_tokens=2)


def test_load_errors(tmp_path):
    with pytest.raises(ModelNotFound):
        qwenkit.load("no-such-model", progress=False)
    with pytest.raises(ModelNotFound):
        qwenkit.load(str(tmp_path / "missing.gguf"), progress=False)
    junk = tmp_path / "x.gguf"
    junk.write_bytes(os.urandom(2048))
    with pytest.raises(QwenkitError):
        qwenkit.load(str(junk), progress=False)


def test_load_truncated_gguf(tmp_path, tiny_qwen2):
    path = tmp_path / "cut.gguf"
    path.write_bytes(tiny_qwen2.read_bytes()[:300_000])
    with pytest.raises(ModelLoadError):
        qwenkit.load(str(path), n_threads=THREADS, progress=False)


# ----- TurnDecoder with synthetic chunks ---------------------------------------------------


def turn(*, thinking=False, tool_format=None, tools=None, prompt_len=7):
    return PreparedTurn(
        prompt=list(range(prompt_len)),
        params=SamplingParams(),
        thinking=thinking,
        starts_in_thinking=thinking,
        tool_format=tool_format,
        tools=tools,
    )


def feed_all(decoder, chunks):
    deltas = [decoder.feed(c) for c in chunks]
    return deltas, check_final(deltas)


def pieces(text, size):
    return [text[i : i + size] for i in range(0, len(text), size)]


HERMES = 'Let me check.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'


@pytest.mark.parametrize("size", [1, 3, 7, 1000])
def test_turn_decoder_parses_a_hermes_call_split_anywhere(size):
    decoder = TurnDecoder("m", turn(tool_format="hermes", tools=[WEATHER_TOOL]), None)
    parts = pieces(HERMES, size)
    chunks = [Chunk(p, [100 + i]) for i, p in enumerate(parts)] + [Chunk("", [151645], finish_reason="stop")]
    deltas, result = feed_all(decoder, chunks)
    assert result.finish_reason == "tool_calls"
    assert [c.name for c in result.tool_calls] == ["get_weather"]
    assert json.loads(result.tool_calls[0].arguments) == {"city": "Paris"}
    assert result.content == "Let me check."
    assert "".join(d.content for d in deltas) == "Let me check."
    assert sum(len(d.tool_calls) for d in deltas) == 1
    assert result.usage.prompt_tokens == 7
    assert result.usage.completion_tokens == len(parts) + 1
    assert result.as_message()["tool_calls"][0]["function"]["name"] == "get_weather"
    assert result.to_dict()["tool_calls"][0]["type"] == "function"


def test_turn_decoder_two_calls_and_length():
    two = HERMES + '\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Rome"}}\n</tool_call>'
    decoder = TurnDecoder("m", turn(tool_format="hermes"), None)
    _, result = feed_all(decoder, [Chunk(two, [1]), Chunk("", [], finish_reason="stop")])
    assert [json.loads(c.arguments)["city"] for c in result.tool_calls] == ["Paris", "Rome"]
    assert len({c.id for c in result.tool_calls}) == 2
    # a call cut by max_tokens is no call: the raw text stays content, finish stays "length"
    decoder = TurnDecoder("m", turn(tool_format="hermes"), None)
    cut = HERMES[: HERMES.index('"arguments"')]
    _, result = feed_all(decoder, [Chunk(cut, [1, 2]), Chunk("", [3], finish_reason="length")])
    assert result.finish_reason == "length" and result.tool_calls == []
    assert result.content.startswith("Let me check.") and "<tool_call>" in result.content


def test_turn_decoder_without_tools_keeps_markup_as_text():
    decoder = TurnDecoder("m", turn(tool_format=None), None)
    _, result = feed_all(decoder, [Chunk(HERMES, [1]), Chunk("", [151645], finish_reason="stop")])
    assert result.tool_calls == [] and result.finish_reason == "stop"
    assert result.content == HERMES


def test_turn_decoder_thinking_split_and_counted():
    decoder = TurnDecoder("m", turn(thinking=True, tool_format="hermes"), (THINK_OPEN, THINK_CLOSE))
    chunks = [
        Chunk("<think>", [THINK_OPEN]),
        Chunk("\nI should ", [11, 12]),
        Chunk("call <tool_call>", [13]),  # a call inside reasoning is reasoning
        Chunk(" nothing.\n", [14]),
        Chunk("</think>", [THINK_CLOSE]),
        Chunk("\n\nIt is ", [15, 16]),
        Chunk("sunny.", [17]),
        Chunk("", [151645], finish_reason="stop"),
    ]
    deltas, result = feed_all(decoder, chunks)
    assert result.reasoning == "I should call <tool_call> nothing."
    assert result.content == "It is sunny."
    assert result.tool_calls == [] and result.finish_reason == "stop"
    assert result.usage.completion_tokens == 10
    assert result.usage.reasoning_tokens == 6  # <think> .. </think>
    assert "".join(d.reasoning for d in deltas) == result.reasoning


def test_turn_decoder_think_tags_in_the_answer_are_not_reasoning():
    decoder = TurnDecoder("m", turn(thinking=True), (THINK_OPEN, THINK_CLOSE))
    chunks = [
        Chunk("<think>", [THINK_OPEN]),
        Chunk("hmm", [1]),
        Chunk("</think>", [THINK_CLOSE]),
        Chunk("\n\nUse ", [2]),
        Chunk("<think>", [THINK_OPEN]),  # the answer talks about the tags
        Chunk(" and ", [3]),
        Chunk("</think>", [THINK_CLOSE]),
        Chunk(".", [4], finish_reason="stop"),
    ]
    _, result = feed_all(decoder, chunks)
    assert result.reasoning == "hmm"
    assert result.content == "Use <think> and </think>."
    assert result.usage.reasoning_tokens == 3
    assert result.usage.completion_tokens == 8
    # a <think> that is not the first token never opens reasoning
    decoder = TurnDecoder("m", turn(thinking=False), (THINK_OPEN, THINK_CLOSE))
    _, result = feed_all(
        decoder, [Chunk("a", [1]), Chunk("<think>", [THINK_OPEN]), Chunk("b", [2], finish_reason="stop")]
    )
    assert (result.content, result.reasoning, result.usage.reasoning_tokens) == ("a<think>b", None, 0)


def test_turn_decoder_thinking_prompt_already_open():
    # the prompt opened the block: output starts with reasoning and only closes it
    decoder = TurnDecoder("m", turn(thinking=True), (THINK_OPEN, THINK_CLOSE))
    chunks = [Chunk("plan", [1]), Chunk("\n</think>\n\n", [THINK_CLOSE]), Chunk("done", [2], finish_reason="stop")]
    _, result = feed_all(decoder, chunks)
    assert (result.reasoning, result.content) == ("plan", "done")
    assert result.usage.reasoning_tokens == 2


def test_turn_decoder_error_chunk():
    decoder = TurnDecoder("m", turn(), None)
    _, result = feed_all(decoder, [Chunk("partial", [1]), Chunk("", [], finish_reason="abort", error="decode failed")])
    assert result.finish_reason == "error"
    assert result.content == "partial"
    decoder = TurnDecoder("m", turn(), None)
    _, result = feed_all(decoder, [Chunk("", [], finish_reason="abort")])
    assert result.finish_reason == "abort" and result.usage.completion_tokens == 0
    assert result.timings.decode_tokens_per_s == 0.0
