"""`qwenkit tune`: data rows, the loss mask as served, training, Ctrl-C and resuming (tiny models)."""

from __future__ import annotations

import json
import os
import signal

import pytest

from qwenkit.chat import build_prompt, load_template
from qwenkit.errors import QwenkitError
from qwenkit.tune.data import ChatExample, TextExample, load_jsonl, parse_row
from qwenkit.tune.encode import encode

pytest.importorskip("peft")
pytest.importorskip("trl")


def _write(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")
    return path


def _tokenizer(checkpoint):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(checkpoint))
    template = load_template(tok.chat_template, architecture=None, name_hint=checkpoint.name)
    return tok, template, lambda text: list(tok(text, add_special_tokens=False)["input_ids"])


# ----- data -----------------------------------------------------------------------------


def test_rows_of_each_kind_are_detected_by_their_keys(tmp_path):
    chat = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}
    rows = [
        chat,
        {**chat, "tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}]},
        {"prompt": "2+2?", "completion": "4"},
        {"prompt": [{"role": "user", "content": "2+2?"}], "completion": [{"role": "assistant", "content": "4"}]},
        {"text": "plain text"},
    ]
    examples = load_jsonl(_write(tmp_path / "d.jsonl", rows))
    assert [type(e) for e in examples] == [ChatExample] * 4 + [TextExample]
    assert examples[1].tools[0]["function"]["name"] == "f"
    assert examples[2].messages == [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}]
    assert examples[3].messages == examples[2].messages


def test_every_bad_row_is_reported_with_its_line_number(tmp_path):
    good = {"text": "ok"}
    rows = [good, "{not json", {"foo": 1}, "", {"messages": [{"role": "user", "content": "no answer"}]}, good]
    with pytest.raises(QwenkitError) as err:
        load_jsonl(_write(tmp_path / "d.jsonl", rows))
    message = str(err.value)
    assert "3 bad row(s)" in message
    assert (
        "line 2: not JSON" in message
        and "line 3: no 'messages'" in message
        and "line 5: no assistant message" in message
    )
    assert "line 1" not in message and "line 6" not in message
    with pytest.raises(ValueError, match="both be strings"):
        parse_row({"prompt": "x", "completion": 3})


# ----- the loss mask ------------------------------------------------------------------------


def _targets(seq, tok):
    """The runs of masked tokens, each decoded."""
    runs, current = [], []
    for token, m in zip(seq.input_ids, seq.mask, strict=True):
        if m:
            current.append(token)
        elif current:
            runs.append(tok.decode(current))
            current = []
    if current:
        runs.append(tok.decode(current))
    return runs


def test_mask_covers_exactly_the_assistant_tokens_and_their_im_end(tiny_hf_qwen2):
    tok, template, tokenize = _tokenizer(tiny_hf_qwen2)
    messages = [
        {"role": "user", "content": "What is 2+2?"},
        {"role": "assistant", "content": "4"},
        {"role": "user", "content": "And 3+3?"},
        {"role": "assistant", "content": " Six, i.e. 6.\n"},
    ]
    [seq] = encode(ChatExample(messages), template, tokenize)
    assert _targets(seq, tok) == ["4<|im_end|>", " Six, i.e. 6.\n<|im_end|>"]
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    assert [t for t, m in zip(seq.input_ids, seq.mask, strict=True) if t == im_end and m] == [im_end, im_end]
    text = tok.decode(seq.input_ids)
    assert text.startswith("<|im_start|>system\nYou are Qwen, created by Alibaba Cloud.")  # as served
    # every target follows exactly the prompt qwenkit serves for that turn, token for token
    for upto, turn in ((1, 0), (3, 1)):
        served = tokenize(build_prompt(template, messages[:upto]).text)
        starts = [i for i in range(1, len(seq.mask)) if seq.mask[i] and not seq.mask[i - 1]]
        assert seq.input_ids[: starts[turn]] == served
    # the newline after <|im_end|> belongs to the next prompt, not to the target
    assert seq.mask[-1] == 0 and tok.decode(seq.input_ids[-1:]) == "\n"


def test_mask_with_tools_and_prompt_completion_rows(tiny_hf_qwen2):
    tok, template, tokenize = _tokenizer(tiny_hf_qwen2)
    tools = [{"type": "function", "function": {"name": "get_time", "description": "Now", "parameters": {}}}]
    call = {"role": "assistant", "content": "", "tool_calls": [{"function": {"name": "get_time", "arguments": {}}}]}
    messages = [
        {"role": "user", "content": "time?"},
        call,
        {"role": "tool", "content": "12:00"},
        {"role": "assistant", "content": "It is noon."},
    ]
    [seq] = encode(ChatExample(messages, tools), template, tokenize)
    first, second = _targets(seq, tok)
    assert first.startswith('<tool_call>\n{"name": "get_time"') and first.endswith("</tool_call><|im_end|>")
    assert second == "It is noon.<|im_end|>"
    assert "<tools>" in tok.decode(seq.input_ids)
    [plain] = encode(parse_row({"prompt": "hi", "completion": "yo"}), template, tokenize)
    assert _targets(plain, tok) == ["yo<|im_end|>"]
    [text] = encode(TextExample("just text"), template, tokenize)
    assert all(text.mask) and tok.decode(text.input_ids) == "just text"


def test_qwen3_thinking_turns_train_on_the_think_block_as_served(tiny_hf_qwen3):
    tok, template, tokenize = _tokenizer(tiny_hf_qwen3)
    messages = [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "Hello!", "reasoning_content": "greet back"},
        {"role": "user", "content": "bye"},
        {"role": "assistant", "content": "Bye."},
    ]
    first, second = encode(ChatExample(messages), template, tokenize)
    # turn 1 thinks: its prompt is the thinking-mode prompt, its target the think block and answer
    assert _targets(first, tok) == ["<think>\ngreet back\n</think>\n\nHello!<|im_end|>"]
    assert tok.decode(first.input_ids).endswith(
        "<|im_start|>assistant\n<think>\ngreet back\n</think>\n\nHello!<|im_end|>\n"
    )
    # turn 2 has no reasoning: served with thinking off (the empty think block is prompt), and
    # Qwen3's template drops turn 1's reasoning from its history, so it is a sequence of its own
    assert _targets(second, tok) == ["Bye.<|im_end|>"]
    served = build_prompt(template, messages[:3], enable_thinking=False).text
    assert tok.decode(second.input_ids).startswith(served) and served.endswith("<think>\n\n</think>\n\n")
    assert "greet back" not in tok.decode(second.input_ids)


# ----- training -------------------------------------------------------------------------------


def _data(tmp_path):
    rows = [
        {
            "messages": [
                {"role": "user", "content": f"Code for item {i}?"},
                {"role": "assistant", "content": f"ITEM-{i}"},
            ]
        }
        for i in range(10)
    ]
    return _write(tmp_path / "train.jsonl", rows)


def _settings(**kw):
    from qwenkit.tune.trainer import TuneSettings

    return TuneSettings(**{"learning_rate": 1e-2, "dropout": 0.0, "eval_every": 2, "save_every": 2, "threads": 2, **kw})


def _base(checkpoint):
    from qwenkit.tune.trainer import Base

    return Base(str(checkpoint), "tiny", checkpoint, checkpoint)


def _adapter_weights(adapter):
    from safetensors.torch import load_file

    return load_file(str(adapter / "adapter_model.safetensors"))


@pytest.fixture(scope="module")
def full_run(tiny_hf_qwen2, tmp_path_factory):
    """Four uninterrupted steps on the tiny Qwen2 checkpoint."""
    from qwenkit.tune.trainer import tune

    tmp = tmp_path_factory.mktemp("tune-full")
    return tune(_base(tiny_hf_qwen2), _data(tmp), tmp / "out", _settings(max_steps=4))


def test_a_few_steps_lower_the_loss_and_leave_a_peft_adapter(full_run, tiny_hf_qwen2):
    held = [r["eval_loss"] for r in full_run.records if "eval_loss" in r]
    assert full_run.steps == 4 and not full_run.interrupted
    assert held[0] == full_run.records[0]["eval_loss"]  # measured before the first step
    assert held[-1] < held[0] - 0.1
    config = json.loads((full_run.adapter / "adapter_config.json").read_text())
    assert config["r"] == 16 and config["lora_alpha"] == 32
    layers = {name.rsplit(".", 1)[-1] for name in config["target_modules"]}  # all linear layers, not lm_head
    assert layers == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    info = json.loads((full_run.adapter / "qwenkit-tune.json").read_text())
    assert info["base_path"] == str(tiny_hf_qwen2)


def test_ctrl_c_leaves_a_checkpoint_and_a_rerun_resumes_from_it(full_run, tiny_hf_qwen2, tmp_path):
    import torch
    from transformers import TrainerCallback

    from qwenkit.tune.trainer import tune

    class CtrlCAtStep2(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            if state.global_step == 1:  # a real SIGINT, during step 2
                os.kill(os.getpid(), signal.SIGINT)

    data, out = _data(tmp_path), tmp_path / "out"
    first = tune(_base(tiny_hf_qwen2), data, out, _settings(max_steps=4), callbacks=[CtrlCAtStep2()])
    assert first.interrupted and first.steps == 2
    assert (out / "checkpoints" / "checkpoint-2").is_dir() and (first.adapter / "adapter_model.safetensors").is_file()
    second = tune(_base(tiny_hf_qwen2), data, out, _settings(max_steps=4))
    assert second.resumed_from == out / "checkpoints" / "checkpoint-2"
    assert second.steps == 4 and not second.interrupted
    # the resumed run ends where the uninterrupted one did
    resumed, straight = _adapter_weights(second.adapter), _adapter_weights(full_run.adapter)
    assert resumed.keys() == straight.keys()
    for name, value in straight.items():
        torch.testing.assert_close(resumed[name], value, atol=1e-5, rtol=1e-4)
    assert [r["step"] for r in second.records if "train_loss" in r] == [2, 4]


# ----- the demo task and the report's scoring -----------------------------------------------


def test_shipped_demo_data_is_the_generator_output_and_held_out_questions_are_unseen(tmp_path):
    from qwenkit.tune import demo

    demo.write(tmp_path)
    for split in ("train", "heldout"):
        assert demo.path(split).read_text() == (tmp_path / f"{split}.jsonl").read_text()
    train, held = load_jsonl(demo.path("train")), load_jsonl(demo.path("heldout"))
    assert len(train) == 80 and len(held) == 20
    asked = {e.messages[0]["content"] for e in train}
    assert not asked & {e.messages[0]["content"] for e in held}
    for example in held:
        assert json.loads(example.messages[-1]["content"])["format"] == "qwenkit-v1"


def test_report_scores_exact_answers_with_json_compared_as_values():
    from qwenkit.tune.report import cases, same_answer

    assert same_answer('{"format": "qwenkit-v1", "answer": "12"}', '{"answer": "12", "format": "qwenkit-v1"}')
    assert same_answer(' {"answer":"12","format":"qwenkit-v1"}\n', '{"answer": "12", "format": "qwenkit-v1"}')
    assert not same_answer('{"answer": 12, "format": "qwenkit-v1"}', '{"answer": "12", "format": "qwenkit-v1"}')
    assert not same_answer("The answer is 12.", '{"answer": "12", "format": "qwenkit-v1"}')
    assert same_answer(" Paris ", "Paris") and not same_answer("paris", "Paris")
    messages = [
        {"role": "user", "content": "a"},
        {"role": "assistant", "content": "b"},
        {"role": "user", "content": "c"},
        {"role": "assistant", "content": "d"},
    ]
    [(prompt, expected)] = cases([ChatExample(messages), TextExample("no answer to score")])
    assert prompt == messages[:3] and expected == "d"
