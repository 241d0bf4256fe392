"""The memory estimate: KV arithmetic, the llama.cpp dry run, and the formula against it."""

from __future__ import annotations

import pytest

from qwenkit.catalog import catalog
from qwenkit.catalog.memory import (
    compute_bytes,
    estimate_gguf,
    estimate_variant,
    kv_bytes,
    repack_types,
)
from qwenkit.engines.llamacpp.dryrun import dry_run
from qwenkit.errors import QwenkitError

GIB = 1 << 30
CAT = catalog()


def test_kv_cache_of_qwen3_8b():
    s = CAT.shape(CAT.get("qwen3-8b"))
    assert kv_bytes(s, 32768, 1) == 36 * 8 * 128 * 2 * 2 * 32768 == 4.5 * GIB
    assert kv_bytes(s, 131072, 1) == 18 * GIB
    assert kv_bytes(s, 8192, 4) == kv_bytes(s, 32768, 1)  # per slot, as the scheduler allocates
    assert kv_bytes(s, 32768, 1, "q8_0", "q8_0") == pytest.approx(4.5 * GIB * 34 / 64)
    assert kv_bytes(s, 32768, 1, "q4_0", "q4_0") == pytest.approx(4.5 * GIB * 18 / 64)
    with pytest.raises(QwenkitError, match="unknown KV cache type"):
        kv_bytes(s, 1024, 1, "q3_k")


def test_llama_cpp_pads_each_slot_to_256_cells():
    s = CAT.shape(CAT.get("qwen2.5-0.5b-instruct"))
    assert kv_bytes(s, 1000, 2) == kv_bytes(s, 1024, 2) == 2 * 1024 * 12 * 1024


def test_repacked_types_follow_the_cpu():
    assert repack_types("x86_64", {"avx2", "fma"}) == {"Q4_0", "Q4_K", "IQ4_NL", "MXFP4"}
    assert "Q2_K" in repack_types("x86_64", {"avx2", "avx512f"})
    assert repack_types("x86_64", {"sse4_2"}) == set()
    assert "Q8_0" in repack_types("aarch64", {"asimd", "i8mm"})


@pytest.mark.parametrize("fixture", ["tiny_qwen2", "tiny_qwen3"])
@pytest.mark.parametrize(("n_ctx", "n_parallel"), [(1024, 1), (4096, 4)])
def test_formula_agrees_with_llama_cpps_dry_run(request, fixture, n_ctx, n_parallel):
    path = request.getfixturevalue(fixture)
    with_dry_run = estimate_gguf(path, n_ctx=n_ctx, n_parallel=n_parallel, dry_run=dry_run)
    assert with_dry_run.kv > 0 and with_dry_run.compute > 0
    formula = estimate_gguf(path, n_ctx=n_ctx, n_parallel=n_parallel)
    assert with_dry_run.source == "llama.cpp dry run" and formula.source == "GGUF metadata"
    assert formula.kv == pytest.approx(with_dry_run.kv, abs=0.01 * 2**20)  # the log prints MiB to 2 decimals
    assert formula.output == pytest.approx(with_dry_run.output, abs=0.01 * 2**20)
    assert formula.compute >= with_dry_run.compute  # never under
    assert formula.weights == with_dry_run.weights == path.stat().st_size


def test_a_dry_run_of_a_broken_file_is_one_clear_error(tmp_path):
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF" + b"\0" * 64)
    with pytest.raises(QwenkitError):
        estimate_gguf(bad, n_ctx=512)


def test_catalogue_estimate_counts_the_vision_tower():
    v = CAT.variant("qwen2.5-vl-3b-instruct:q4_k_m")
    est = estimate_variant(CAT, v, n_ctx=8192)
    tower = CAT.tower(v.entry)
    assert est.vision >= 2 * tower.params() > 1.2e9  # the f16 projector, about 1.3 GB
    text_only = estimate_variant(CAT, CAT.variant("qwen2.5-3b-instruct:q4_k_m"), n_ctx=8192)
    assert est.total > text_only.total + 1.2e9


def test_moe_compute_uses_active_experts():
    moe = CAT.shape(CAT.get("qwen3-30b-a3b"))
    dense = CAT.shape(CAT.get("qwen3-32b"))
    assert compute_bytes(moe, 4096, 1) < compute_bytes(dense, 4096, 1)


def test_cuda_adds_its_context_and_drops_the_cpu_repack():
    v = CAT.variant("qwen3-8b:q4_k_m")
    cpu = estimate_variant(CAT, v, n_ctx=8192, device="cpu")
    gpu = estimate_variant(CAT, v, n_ctx=8192, device="cuda")
    assert gpu.repacked == 0 and gpu.process > cpu.process


def test_a_checkpoint_counts_its_tower_once():
    v = CAT.variant("qwen2.5-vl-3b-instruct:bf16")
    est = estimate_variant(CAT, v, n_ctx=4096)
    tower = CAT.tower(v.entry)
    assert est.vision < tower.params()  # only the encoder's compute buffer: the weights are in the checkpoint
    assert est.weights >= 2 * CAT.params(v.entry)
