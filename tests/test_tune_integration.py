"""`qwenkit tune --data demo --report` on the embedded 0.5B: a held-out failure becomes a pass.

A few minutes on 2 quiet cores (16 steps of 2 short sequences, then 20 greedy answers on
llama.cpp before and after, and 20 from peft)."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.integration

pytest.importorskip("peft")
pytest.importorskip("trl")


def test_demo_fine_tune_turns_held_out_failures_into_passes(source_gguf, tmp_path):
    from qwenkit.tune import demo
    from qwenkit.tune.data import load_jsonl
    from qwenkit.tune.report import build_report
    from qwenkit.tune.trainer import TuneSettings, resolve_base, tune

    base = resolve_base(str(source_gguf))
    settings = TuneSettings(
        max_steps=16, batch_size=2, learning_rate=1e-3, eval_every=8, save_every=8, max_length=96, threads=2
    )
    result = tune(base, demo.path("train"), tmp_path, settings, eval_path=demo.path("heldout"))
    held = [r["eval_loss"] for r in result.records if "eval_loss" in r]
    assert held[-1] < held[0]
    report = build_report(base, result.adapter, load_jsonl(demo.path("heldout")), tmp_path, merged=False, threads=2)
    assert report.score_before <= 0.1  # the base model does not answer in the house format
    assert report.score_after >= 0.3  # measured 0.5: the format is learnt, some sums stay wrong
    assert report.stop_rate_after >= 0.95
    assert report.agreement_peft_gguf >= 0.8
    assert (tmp_path / "report.md").is_file()
