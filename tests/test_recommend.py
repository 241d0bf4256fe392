"""`qwenkit recommend`: a dozen pinned machines and tasks, each with a sensible, explained answer."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from qwenkit.catalog import catalog
from qwenkit.catalog.device import Device, parse_nvidia_smi
from qwenkit.catalog.memory import estimate_variant
from qwenkit.catalog.recommend import Ask, recommend
from qwenkit.cli import app
from qwenkit.cli.recommend import parse_size
from qwenkit.errors import QwenkitError

GIB = 1 << 30
CAT = catalog()


def cpu(gib: float, gbs: float = 40) -> Device:
    return Device("cpu", int(gib * GIB), int(gib * GIB), gbs, f"given {gbs} GB/s")


def gpu(gib: float, gbs: float = 1008) -> Device:
    return Device("cuda", int(gib * GIB), int(gib * GIB), gbs, f"given {gbs} GB/s")


def names(advice) -> list[str]:
    return [p.variant.name for p in advice.picks]


def test_2gb_cpu_box_asking_for_code_gets_a_small_coder_at_q4():
    advice = recommend(CAT, Ask("code"), cpu(2))
    best = advice.picks[0]
    assert best.variant.entry.name in ("qwen2.5-coder-0.5b-instruct", "qwen2.5-coder-1.5b-instruct")
    assert best.variant.quant.startswith("q4") and best.engine == "llamacpp"
    assert best.estimate.required <= 0.95 * 2 * GIB
    assert any("specialised for code" in r for r in best.reasons)
    assert best.commands(1)["pull"] == f"qwenkit pull {best.variant.name}"


def test_24gb_gpu_asking_for_reasoning_gets_a_hybrid_thinking_qwen35_or_qwen3():
    best = recommend(CAT, Ask("reasoning"), gpu(24)).picks[0]
    assert best.variant.entry.name in ("qwen3.5-9b", "qwen3.5-27b", "qwen3-8b", "qwen3-14b")
    assert best.variant.entry.thinking == "hybrid" and best.thinking_budget
    assert best.n_ctx == 32768  # room to think
    assert "--think --thinking-budget" in best.commands(1)["run"]


def test_16gb_laptop_asking_for_vision_gets_qwen25_vl_3b_with_its_projector():
    best = recommend(CAT, Ask("vision"), cpu(16, gbs=40)).picks[0]
    assert best.variant.entry.name == "qwen2.5-vl-3b-instruct"
    assert best.estimate.vision > 1.2e9  # the f16 projector and the encoder's buffer are counted
    assert best.variant.mmproj is not None


def test_8gb_asking_for_128k_of_qwen3_8b_is_told_what_fits():
    advice = recommend(CAT, Ask("chat", n_ctx=131072, model="qwen3-8b"), cpu(8))
    assert advice.picks == []
    text = " ".join(advice.notes)
    assert "KV cache 18.0 GiB" in text
    assert "fits with --ctx" in text and "GPU with at least" in text


def test_a_model_past_its_context_is_not_offered():
    advice = recommend(CAT, Ask("math", n_ctx=16384), cpu(64))
    assert all(p.variant.entry.family != "qwen2.5-math" for p in advice.picks)  # Math is 4K only


def test_math_at_its_native_context_prefers_a_math_capable_model():
    best = recommend(CAT, Ask("math"), gpu(24)).picks[0]
    assert "math" in best.variant.entry.specialties
    assert best.n_ctx == 4096


def test_big_gpu_for_code_gets_the_32b_coder():
    best = recommend(CAT, Ask("code"), gpu(80, gbs=3350)).picks[0]
    assert best.variant.entry.name == "qwen2.5-coder-32b-instruct"


def test_parallel_users_multiply_the_kv_cache():
    one = recommend(CAT, Ask("chat", model="qwen3-4b"), cpu(64)).picks[0]
    eight = recommend(CAT, Ask("chat", model="qwen3-4b", n_parallel=8), cpu(64)).picks[0]
    assert eight.estimate.kv == 8 * one.estimate.kv
    assert "--parallel 8" in eight.commands(8)["serve"]


def test_a_speed_floor_drops_slow_picks():
    advice = recommend(CAT, Ask("chat", min_tps=30), cpu(64, gbs=40))
    assert advice.picks and all(p.tps >= 30 for p in advice.picks)
    too_fast = recommend(CAT, Ask("chat", min_tps=10_000), cpu(64))
    assert too_fast.picks == []
    assert any("under the --min-speed 10000" in n for n in too_fast.notes)


def test_checkpoints_need_cuda_but_models_without_gguf_still_run_on_cpu():
    on_cpu = recommend(CAT, Ask("math", model="qwen2.5-math-1.5b-instruct"), cpu(16)).picks
    assert [p.variant.quant for p in on_cpu] == ["bf16"] and on_cpu[0].engine == "transformers"
    assert "--engine transformers" in on_cpu[0].commands(1)["run"]
    on_gpu = recommend(CAT, Ask("chat", model="qwen2.5-72b-instruct"), gpu(48, gbs=864)).picks
    assert on_gpu and on_gpu[0].variant.quant in ("awq", "gptq-int4", "q4_k_m", "q4_0", "q3_k_m", "q2_k")


def test_nothing_fits_in_a_tiny_budget_and_it_says_so():
    advice = recommend(CAT, Ask("chat"), cpu(0.25))
    assert advice.picks == []
    assert any("even its weights do not fit" in n or "fits with --ctx" in n for n in advice.notes)


def test_moe_is_explained_and_fast():
    pick = recommend(CAT, Ask("chat", model="qwen3-30b-a3b"), gpu(48, gbs=864)).picks[0]
    assert any("MoE" in r for r in pick.reasons)
    dense = recommend(CAT, Ask("chat", model="qwen3-32b"), gpu(48, gbs=864)).picks[0]
    assert pick.tps > 3 * dense.tps


def test_bad_input_is_one_clear_error():
    with pytest.raises(QwenkitError, match="unknown task"):
        recommend(CAT, Ask("poetry"), cpu(8))
    with pytest.raises(QwenkitError, match="not in the catalogue"):
        recommend(CAT, Ask("chat", model="qwen9"), cpu(8))


@pytest.mark.parametrize(
    ("text", "size"),
    [("8GB", 8 * 10**9), ("24GiB", 24 * GIB), ("512MiB", 512 << 20), ("16", 16 * GIB), ("1.5 gib", int(1.5 * GIB))],
)
def test_memory_sizes(text, size):
    assert parse_size(text) == size


def test_nvidia_smi_lists_every_gpu():
    gpus = parse_nvidia_smi("NVIDIA H100 80GB HBM3, 81559, 80000\nNVIDIA GeForce RTX 4090, 24564, 23000\n")
    assert [g.name for g in gpus] == ["NVIDIA H100 80GB HBM3", "NVIDIA GeForce RTX 4090"]
    assert gpus[1].free == 23000 << 20


def test_cli_json_is_a_ranked_list_and_nothing_fits_exits_1():
    runner = CliRunner()
    res = runner.invoke(app, ["recommend", "--task", "code", "--device", "cpu", "--memory", "2GiB", "--json"])
    assert res.exit_code == 0, res.output
    picks = json.loads(res.stdout)["picks"]
    assert picks and picks[0]["score"] >= picks[-1]["score"]
    assert {"model", "engine", "context", "memory_bytes", "expected_tokens_per_s", "reasons", "commands"} <= set(
        picks[0]
    )
    res = runner.invoke(app, ["recommend", "-m", "qwen3-8b", "--ctx", "131072", "--device", "cpu", "--memory", "8GB"])
    assert res.exit_code == 1
    assert "nothing in the catalogue fits" in res.output and "--ctx" in res.output
    res = runner.invoke(app, ["recommend", "--memory", "lots"])
    assert res.exit_code != 0


def test_24gb_gpu_asking_for_code_gets_qwen3_coder_or_a_qwen35_that_fits():
    advice = recommend(CAT, Ask("code"), gpu(24))
    best = advice.picks[0]
    assert best.variant.entry.name == "qwen3-coder-30b-a3b-instruct" or best.variant.entry.family == "qwen3.5"
    assert best.estimate.required <= 0.95 * 24 * GIB
    coder = recommend(CAT, Ask("code", model="qwen3-coder-30b-a3b-instruct"), gpu(24)).picks[0]
    assert any("qwen3-coder is specialised for code" in r for r in coder.reasons)
    assert "qwen3-coder-30b-a3b-instruct" in {
        p.variant.entry.name for p in recommend(CAT, Ask("code"), gpu(24), top=8).picks
    }


def test_16gb_cpu_asking_for_128k_gets_a_hybrid_model_and_is_told_why():
    best = recommend(CAT, Ask("chat", n_ctx=131072), cpu(16)).picks[0]
    shape = CAT.shape(best.variant.entry)
    assert shape.is_hybrid and best.n_ctx == 131072
    why = next(r for r in best.reasons if r.startswith("hybrid attention"))
    assert f"a KV cache in {shape.attention_layers} of {shape.layers} layers" in why and "MiB of recurrent state" in why
    assert best.estimate.state > 0 and best.estimate.kv < 2 * GIB


def test_a_qwen35_128k_context_costs_a_fraction_of_a_qwen3_of_its_size():
    hybrid = recommend(CAT, Ask("chat", n_ctx=131072, model="qwen3.5-9b"), cpu(64)).picks[0]
    qwen3 = recommend(CAT, Ask("chat", n_ctx=131072, model="qwen3-8b"), cpu(64)).picks[0]
    assert hybrid.estimate.kv + hybrid.estimate.state < 0.25 * qwen3.estimate.kv  # 4.05 GiB against 18 GiB
    why = next(r for r in hybrid.reasons if r.startswith("hybrid attention"))
    assert "qwen3-8b would need 18.0 GiB of KV" in why
    assert not any(r.startswith("hybrid attention") for r in qwen3.reasons)


def test_a_gptq_hybrid_counts_its_bf16_attention_and_deltanet_layers():
    gptq = estimate_variant(CAT, CAT.variant("qwen3.5-27b:gptq-int4"), n_ctx=4096, device="cuda")
    gguf = estimate_variant(CAT, CAT.variant("qwen3.5-27b:q4_k_m"), n_ctx=4096, device="cuda")
    assert gptq.weights > 1.3 * gguf.weights  # only the MLPs are 4-bit
