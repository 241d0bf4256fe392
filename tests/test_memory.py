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
    state_bytes,
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


# Qwen3.5-9B: 24 gated DeltaNet layers, each keeping per sequence (llama.cpp's n_embd_r + n_embd_s, f32)
# (4 - 1) x (2 x 16 x 128 + 32 x 128) convolution inputs and 128 x 32 x 128 DeltaNet state
QWEN35_9B_STATE = 24 * (3 * 8192 + 128 * 32 * 128) * 4


def test_a_hybrid_keeps_kv_in_its_full_attention_layers_only():
    hybrid = CAT.shape(CAT.get("qwen3.5-9b"))
    assert (hybrid.attention_layers, hybrid.recurrent_layers) == (8, 24)
    assert kv_bytes(hybrid, 131072, 1) == 8 * 4 * 256 * 2 * 2 * 131072 == 4 * GIB
    qwen3 = CAT.shape(CAT.get("qwen3-8b"))
    assert kv_bytes(hybrid, 131072, 1) < kv_bytes(qwen3, 131072, 1) / 4  # 4 GiB against 18 GiB


def test_the_recurrent_state_is_fixed_per_sequence_and_each_checkpoint_copies_it():
    hybrid = CAT.shape(CAT.get("qwen3.5-9b"))
    assert state_bytes(hybrid, 1) == QWEN35_9B_STATE  # about 50 MiB
    assert state_bytes(hybrid, 4) == 4 * QWEN35_9B_STATE
    assert state_bytes(hybrid, 2, ctx_checkpoints=3) == 2 * 4 * QWEN35_9B_STATE
    assert state_bytes(CAT.shape(CAT.get("qwen3-8b")), 4, ctx_checkpoints=3) == 0
    with pytest.raises(QwenkitError, match="checkpoints"):
        state_bytes(hybrid, 1, ctx_checkpoints=-1)
    v = CAT.variant("qwen3.5-9b:q4_k_m")
    short, long = (estimate_variant(CAT, v, n_ctx=n, n_parallel=2, ctx_checkpoints=3) for n in (4096, 131072))
    assert short.state == long.state == 2 * 4 * QWEN35_9B_STATE  # independent of the context
    assert long.total == sum(long.parts().values()) and long.parts()["state"] == long.state
    assert long.kv - short.kv == 2 * (131072 - 4096) * 32 * 1024


def _hybrid_header(path, *, nextn: int) -> None:
    """A metadata-only qwen35 GGUF with the keys llama.cpp's qwen35 loader reads (block_count
    counts the MTP layers, as the converter writes it)."""
    import gguf

    w = gguf.GGUFWriter(str(path), "qwen35")
    w.add_block_count(8 + nextn)
    w.add_uint32("qwen35.nextn_predict_layers", nextn)
    w.add_embedding_length(256)
    w.add_feed_forward_length(512)
    w.add_head_count(4)
    w.add_head_count_kv(2)
    w.add_key_length(64)
    w.add_ssm_conv_kernel(4)
    w.add_ssm_state_size(32)
    w.add_ssm_group_count(2)
    w.add_ssm_time_step_rank(4)
    w.add_ssm_inner_size(4 * 48)
    w.add_uint32("qwen35.full_attention_interval", 4)
    w.add_token_list([f"t{i}" for i in range(1000)])
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def test_a_hybrid_gguf_on_disk_is_read_from_its_ssm_keys(tmp_path):
    path = tmp_path / "hybrid.gguf"
    _hybrid_header(path, nextn=1)
    est = estimate_gguf(path, n_ctx=1024, n_parallel=2, ctx_checkpoints=1)
    # 8 layers (the MTP layer has no cache): 2 with attention, 6 with state
    assert est.kv == 2 * 2 * 64 * 2 * 2 * 1024 * 2
    conv = 3 * (2 * 2 * 32 + 4 * 48)
    assert est.state == 6 * (conv + 32 * 4 * 48) * 4 * 2 * 2
    assert est.output == 4 * 1000 * 2


@pytest.mark.parametrize("name", ["qwen3.5-0.8b", "qwen3.5-9b", "qwen3.5-35b-a3b"])
def test_hybrid_formula_agrees_with_llama_cpps_dry_run_at_real_shapes(name, source_gguf, tmp_path):
    """The full tensor table of a real Qwen3.5 (the source's vocabulary), data left as a hole:
    llama.cpp sizes its KV cache and recurrent state exactly as the formula does."""
    from qwenkit.testing.sparse import sparse_hybrid_gguf

    shape = CAT.shape(CAT.get(name))
    path = sparse_hybrid_gguf(tmp_path / f"{name}.gguf", shape, source_gguf)
    assert path.stat().st_size > 2 * CAT.params(CAT.get(name)) * 0.6 and path.stat().st_blocks * 512 < 64 << 20
    for n_ctx, n_parallel in [(8192, 1), (32768, 4)]:
        llama = estimate_gguf(path, n_ctx=n_ctx, n_parallel=n_parallel, dry_run=dry_run)
        formula = estimate_gguf(path, n_ctx=n_ctx, n_parallel=n_parallel)
        assert formula.kv == llama.kv == kv_bytes(shape, n_ctx, n_parallel)
        assert formula.state == state_bytes(shape, n_parallel) > 0
        assert llama.state == pytest.approx(formula.state, abs=0.006 * 2**20)  # the log prints MiB to 2 decimals
        assert llama.compute <= formula.compute <= 1.25 * llama.compute  # never under
