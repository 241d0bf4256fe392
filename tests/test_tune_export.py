"""`qwenkit export lora`: a LoRA trained on a (tiny) GGUF, exported to GGUF, gives llama.cpp the
logits peft gives; and what the export refuses."""

from __future__ import annotations

import json

import pytest
from lora_helpers import correlation, llama_logits, peft_logits

from qwenkit.errors import QwenkitError

pytest.importorskip("peft")
pytest.importorskip("trl")

PROMPT = "<|im_start|>user\nCode for item 3?<|im_end|>\n<|im_start|>assistant\n"


@pytest.fixture(scope="module")
def trained(tiny_qwen2, tmp_path_factory):
    """`qwenkit tune` on the tiny Qwen2 GGUF itself (dequantized by the transformers engine)."""
    from qwenkit.tune.trainer import TuneSettings, resolve_base, tune

    tmp = tmp_path_factory.mktemp("tune-gguf")
    rows = [
        {
            "messages": [
                {"role": "user", "content": f"Code for item {i}?"},
                {"role": "assistant", "content": f"ITEM-{i}"},
            ]
        }
        for i in range(6)
    ]
    (tmp / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    base = resolve_base(str(tiny_qwen2))
    settings = TuneSettings(max_steps=3, learning_rate=5e-2, dropout=0.0, held_out=0.0, threads=2, save_every=10)
    result = tune(base, tmp / "train.jsonl", tmp / "out", settings)
    return base, result.adapter


def test_exported_lora_gives_llama_cpp_the_logits_peft_gives(trained, tiny_qwen2, tmp_path):
    from transformers import AutoTokenizer

    from qwenkit.tune.export import export_lora

    base, adapter = trained
    out = export_lora(adapter, tmp_path / "adapter.gguf")  # the base is read from the adapter's own record
    import gguf

    reader = gguf.GGUFReader(str(out))
    kv = {f.name: f for f in reader.fields.values()}
    assert bytes(kv["general.type"].parts[-1]).decode() == "adapter"
    assert float(kv["adapter.lora.alpha"].parts[-1][0]) == 32.0
    assert any(t.name == "blk.0.attn_q.weight.lora_a" for t in reader.tensors)

    tokens = list(AutoTokenizer.from_pretrained(str(base.checkpoint))(PROMPT)["input_ids"])
    hf_base, hf_lora = peft_logits(base.checkpoint, tokens), peft_logits(base.checkpoint, tokens, adapter)
    cpp_base, cpp_lora = llama_logits(tiny_qwen2, tokens), llama_logits(tiny_qwen2, tokens, out)
    assert correlation(hf_base, cpp_base) > 0.999
    assert correlation(hf_lora, cpp_lora) > 0.999
    # the adapter's own contribution survives the trip, not just the base
    assert correlation(hf_lora - hf_base, cpp_lora - cpp_base) > 0.99
    assert abs(hf_lora - hf_base).max() > 0.05


def test_export_refuses_what_gguf_lora_cannot_carry(trained, tmp_path):
    from qwenkit.tune.export import export_lora

    _base, adapter = trained
    with pytest.raises(QwenkitError, match="not a peft adapter"):
        export_lora(tmp_path, tmp_path / "x.gguf")
    bad = tmp_path / "bad"
    bad.mkdir()
    config = json.loads((adapter / "adapter_config.json").read_text())
    (bad / "adapter_config.json").write_text(json.dumps({**config, "use_dora": True}))
    (bad / "qwenkit-tune.json").write_text((adapter / "qwenkit-tune.json").read_text())
    with pytest.raises(QwenkitError, match="no DoRA"):
        export_lora(bad, tmp_path / "x.gguf")


def test_merged_export_matches_peft_and_the_modelfile_carries_qwen_template(trained, tiny_qwen2, tmp_path):
    from transformers import AutoTokenizer

    from qwenkit.tune.export import export_merged, ollama_modelfile

    base, adapter = trained
    merged = export_merged(adapter, tmp_path / "merged.gguf", quant="f32")  # merged in float32, not quantized
    tokens = list(AutoTokenizer.from_pretrained(str(base.checkpoint))(PROMPT)["input_ids"])
    assert correlation(peft_logits(base.checkpoint, tokens, adapter), llama_logits(merged, tokens)) > 0.999
    text = ollama_modelfile(tiny_qwen2, tmp_path / "a.gguf", "...You are Qwen, created by Alibaba Cloud...")
    assert f"FROM {tiny_qwen2.resolve()}" in text and f"ADAPTER {(tmp_path / 'a.gguf').resolve()}" in text
    assert "<|im_start|>user\n{{ .Content }}<|im_end|>\n{{ else if" in text  # newline kept after each turn
    assert 'PARAMETER stop "<|im_end|>"' in text and "You are Qwen, created by Alibaba Cloud." in text


def test_export_takes_the_run_directory_tune_made_as_well_as_its_adapter(trained, tmp_path):
    from typer.testing import CliRunner

    from qwenkit.cli import app

    _base, adapter = trained
    run_dir = adapter.parent  # `qwenkit tune --out RUN_DIR` wrote RUN_DIR/adapter
    runner = CliRunner()
    from_run = runner.invoke(app, ["export", "lora", "--adapter", str(run_dir), "--out", str(tmp_path / "run.gguf")])
    assert from_run.exit_code == 0, from_run.output
    assert f"using the adapter in {adapter}" in " ".join(from_run.output.split())
    direct = runner.invoke(app, ["export", "lora", "--adapter", str(adapter), "--out", str(tmp_path / "dir.gguf")])
    assert direct.exit_code == 0, direct.output
    assert "using the adapter in" not in direct.output
    assert (tmp_path / "run.gguf").read_bytes() == (tmp_path / "dir.gguf").read_bytes()
