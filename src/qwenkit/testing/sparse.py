"""Header-only GGUFs with the full tensor table of a real hybrid shape, for llama.cpp dry runs.

``sparse_hybrid_gguf(path, shape, source_gguf)`` writes the metadata and tensor table that
llama.cpp's qwen35 / qwen35moe loaders read for a catalogue `Shape` (Qwen3.5-9B, 35B-A3B, ...),
with the tokenizer of ``source_gguf`` (so the vocabulary is that file's, not Qwen3.5's), and
extends the file to its full size without writing the data: the data section is a hole, so a
65 GB model costs a few MB of disk. A ``no_alloc`` dry run (``engines.llamacpp.dryrun``) sizes
its KV cache, recurrent state and compute buffers exactly as for the real file; nothing can
generate from it. The MTP layer is left out (llama.cpp skips it anyway).
"""

from __future__ import annotations

import os
from pathlib import Path

import gguf
import numpy as np

from qwenkit.catalog.schema import Shape
from qwenkit.store.gguf_header import ARRAY
from qwenkit.testing.tiny import tokenizer_metadata

F16, F32 = gguf.GGMLQuantizationType.F16, gguf.GGMLQuantizationType.F32


def sparse_hybrid_gguf(path: os.PathLike[str] | str, shape: Shape, source_gguf: os.PathLike[str] | str) -> Path:
    """Write the sparse GGUF of hybrid `shape` (f16 matrices, f32 vectors) at `path`."""
    if shape.linear is None:
        raise ValueError("sparse_hybrid_gguf takes a hybrid (linear-attention) shape")
    path = Path(path)
    arch = "qwen35moe" if shape.is_moe else "qwen35"
    kv = tokenizer_metadata(Path(source_gguf))
    vocab = len(kv["tokenizer.ggml.tokens"].value)
    w = gguf.GGUFWriter(str(path), arch)
    _hparams(w, arch, shape)
    VT = gguf.GGUFValueType
    for key, item in kv.items():
        if key.startswith("tokenizer.ggml."):
            sub = VT(item.sub_type) if item.vtype == ARRAY and item.sub_type is not None else None
            w.add_key_value(key, item.value, VT(item.vtype), sub_type=sub)
    data = 0
    for name, dims in _tensors(shape, vocab):
        kind = F32 if len(dims) == 1 or "ssm_conv1d" in name else F16
        nbytes = int(np.prod(dims)) * (4 if kind == F32 else 2)
        dtype = np.dtype(np.float32 if kind == F32 else np.float16)
        w.add_tensor_info(name, tuple(reversed(dims)), dtype, nbytes, raw_dtype=kind)
        data += -(-nbytes // w.data_alignment) * w.data_alignment
    try:
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_ti_data_to_file()
    finally:
        w.close()
    with path.open("r+b") as f:  # the data section as a hole: tensor offsets must lie inside the file
        header = f.seek(0, os.SEEK_END)
        f.truncate(-(-header // w.data_alignment) * w.data_alignment + data)
    return path


def _hparams(w: gguf.GGUFWriter, arch: str, s: Shape) -> None:
    assert s.linear is not None
    lin = s.linear
    w.add_file_type(gguf.LlamaFileType.MOSTLY_F16)
    w.add_context_length(262144)
    w.add_embedding_length(s.hidden)
    w.add_block_count(s.layers)
    w.add_head_count(s.heads)
    w.add_head_count_kv(s.kv_heads)
    w.add_key_length(s.head_dim)
    w.add_value_length(s.head_dim)
    w.add_rope_freq_base(10_000_000.0)
    w.add_rope_dimension_sections([11, 11, 10, 0])
    w.add_layer_norm_rms_eps(1e-6)
    w.add_ssm_conv_kernel(lin.conv_kernel)
    w.add_ssm_state_size(lin.key_head_dim)
    w.add_ssm_group_count(lin.key_heads)
    w.add_ssm_time_step_rank(lin.value_heads)
    w.add_ssm_inner_size(lin.value_heads * lin.value_head_dim)
    w.add_full_attention_interval(lin.full_attention_interval)
    if s.is_moe:
        w.add_expert_count(s.experts)
        w.add_expert_used_count(s.active_experts)
        w.add_expert_feed_forward_length(s.expert_ffn)
        w.add_expert_shared_feed_forward_length(s.shared_expert_ffn)
    else:
        w.add_feed_forward_length(s.ffn)


def _tensors(s: Shape, vocab: int) -> list[tuple[str, tuple[int, ...]]]:
    """(name, dims as llama.cpp's create_tensor lists them) for every tensor of `s`."""
    assert s.linear is not None
    lin, h = s.linear, s.hidden
    inner, conv = lin.value_heads * lin.value_head_dim, lin.conv_channels
    q, kv = s.heads * s.head_dim, s.kv_heads * s.head_dim
    out: list[tuple[str, tuple[int, ...]]] = [("token_embd.weight", (h, vocab)), ("output_norm.weight", (h,))]
    if not s.tied:
        out.append(("output.weight", (h, vocab)))
    for il in range(s.layers):
        layer: dict[str, tuple[int, ...]] = {"attn_norm.weight": (h,), "post_attention_norm.weight": (h,)}
        if (il + 1) % lin.full_attention_interval == 0:
            layer |= {
                "attn_q.weight": (h, 2 * q),  # queries and their output gate
                "attn_k.weight": (h, kv),
                "attn_v.weight": (h, kv),
                "attn_output.weight": (q, h),
                "attn_q_norm.weight": (s.head_dim,),
                "attn_k_norm.weight": (s.head_dim,),
            }
        else:
            layer |= {
                "attn_qkv.weight": (h, conv),
                "attn_gate.weight": (h, inner),
                "ssm_conv1d.weight": (lin.conv_kernel, conv),
                "ssm_dt.bias": (lin.value_heads,),
                "ssm_a": (lin.value_heads,),
                "ssm_beta.weight": (h, lin.value_heads),
                "ssm_alpha.weight": (h, lin.value_heads),
                "ssm_norm.weight": (lin.value_head_dim,),
                "ssm_out.weight": (inner, h),
            }
        if s.is_moe:
            e, f, sf = s.experts, s.expert_ffn, s.shared_expert_ffn
            layer |= {
                "ffn_gate_inp.weight": (h, e),
                "ffn_gate_exps.weight": (h, f, e),
                "ffn_up_exps.weight": (h, f, e),
                "ffn_down_exps.weight": (f, h, e),
                "ffn_gate_inp_shexp.weight": (h, 1),
                "ffn_gate_shexp.weight": (h, sf),
                "ffn_up_shexp.weight": (h, sf),
                "ffn_down_shexp.weight": (sf, h),
            }
        else:
            layer |= {"ffn_gate.weight": (h, s.ffn), "ffn_up.weight": (h, s.ffn), "ffn_down.weight": (s.ffn, h)}
        out += [(f"blk.{il}.{name}", dims) for name, dims in layer.items()]
    return out
