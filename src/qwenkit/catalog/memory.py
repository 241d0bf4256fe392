"""How much memory a model needs at a context and a number of parallel sequences.

The estimate follows what llama.cpp allocates, as qwenkit's scheduler configures it (one KV
stream of `n_ctx` cells per slot, n_ubatch = n_batch = 512, one logits row per slot):

- weights: the GGUF file, memory-mapped and prefetched, so all of it is resident; plus, on CPU,
  a second copy of every tensor the CPU backend repacks for its SIMD kernels (x86 AVX2: Q4_0,
  Q4_K, IQ4_NL; AVX-512 adds Q2_K; ARM with dotprod/i8mm: most K-quants and Q8_0). The mapped
  pages of repacked tensors stay resident after load (they are clean page cache and reclaimable,
  but they count in RSS).
- KV cache: layers x kv_heads x head_dim x (K bytes + V bytes) per cell, cells = n_ctx rounded
  up to 256 per slot (llama.cpp pads), times the slots. head_dim comes from the config. A hybrid
  model (Qwen3.5, Qwen3-Next) has a KV cache in its full-attention layers only (one in
  `full_attention_interval`, MTP layers excluded).
- recurrent state (hybrid models): per linear-attention layer and slot, llama.cpp's
  `llama_memory_recurrent` keeps one f32 row of n_embd_r (the short convolution's last
  kernel-1 inputs over q, k and v) and one of n_embd_s (a key_dim x value_dim DeltaNet matrix per
  value head), whatever the context; each context checkpoint kept per slot (a saved copy of that
  state, as llama-server's `--ctx-checkpoints`) costs the same again.
- compute buffer: the largest live activations of a 512-token ubatch with flash attention:
  about 4 x n_ubatch x (3 x FFN + 4 x hidden) bytes (a MoE adds each selected expert's
  n_embd-wide output), plus the f16 attention mask (n_ubatch x n_ctx) and one logits row per slot.
  Checked, with the KV and recurrent state, against llama.cpp's own dry runs of GGUFs with the
  real Qwen3.5 0.8B-397B-A17B shapes.
- compute graphs: llama.cpp keeps three graphs' metadata (the reserve graph and two kept for
  reuse, with and without outputs), each ggml's tensor overhead plus graph overhead per node for
  its node budget: max(1024, 8 x tensors), and max(40 x n_ubatch, 32 x tensors) for the hybrid
  architectures (their DeltaNet chunk loops): 8.3 MiB per graph at 20,480 nodes, resident once used.
- output buffer: n_vocab float32 per slot (llama.cpp grows it only when a prompt is scored with `echo`).
- vision tower: the mmproj GGUF (f16 here) plus its own compute buffer.
- process: the Python process with qwenkit and llama.cpp's libraries (67 MiB measured, 81 MiB
  with the server's imports) plus llama.cpp's vocabulary tables (about 320 bytes per token:
  47 MiB measured for Qwen's 151,936).

For a GGUF on disk, `estimate_gguf` takes llama.cpp's own KV, compute and output sizes from a
dry-run (`no_alloc`) load and the repacked bytes from the file's tensor types.
"""

from __future__ import annotations

import math
import platform
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from qwenkit.catalog.family import ESTIMATE_MARGIN, Catalog, Variant
from qwenkit.catalog.schema import LinearAttention, Shape, Tower
from qwenkit.errors import QwenkitError
from qwenkit.store.gguf_header import scan, shard_names

MIB = 1 << 20
HEADROOM = 0.95  # a model fits when it needs at most this share of the available memory
N_UBATCH = 512
SCORED_ROWS = 16  # logits rows the llama.cpp scheduler reserves for a prompt scored with `echo` (SCORED_CHUNK)
PROCESS_BASE = 72 * MIB  # python, numpy, jinja2, pydantic, the catalogue, llama.cpp's libraries (67 MiB measured)
SERVER_EXTRA = 16 * MIB  # fastapi + uvicorn + the server's modules (14 MiB measured)
VOCAB_BYTES_PER_TOKEN = 320  # llama.cpp's vocabulary maps and qwenkit's token pieces
GRAPHS = 3  # llama_context's reserve graph and gf_res_prev[2]
DELTA_CHUNK = 64  # the chunk of llama.cpp's gated DeltaNet prefill (models/delta-net-base.cpp)
NODE_BYTES = 368 + 56  # ggml_tensor_overhead() and ggml_graph_overhead_custom() per node (55 B at 20,480 nodes)
CUDA_CONTEXT = 500 * MIB  # a CUDA context and cuBLAS workspace, per GPU (typical, not measured here)
# bytes per element of a KV cache type (llama.cpp block sizes: q8_0 34/32, q4_0 18/32)
KV_TYPE_BYTES = {
    "f16": 2.0,
    "bf16": 2.0,
    "f32": 4.0,
    "q8_0": 34 / 32,
    "q5_1": 24 / 32,
    "q5_0": 22 / 32,
    "q4_0": 18 / 32,
}
# GGML type ids and block sizes (bytes, elements) for the types the CPU backend may repack
_GGML_TYPES = {2: "Q4_0", 8: "Q8_0", 10: "Q2_K", 12: "Q4_K", 13: "Q5_K", 14: "Q6_K", 20: "IQ4_NL", 39: "MXFP4"}
# the quant's main matmul type, for files not on disk
_BODY_TYPE = {"q4_0": "Q4_0", "q4_k_m": "Q4_K", "q2_k": "Q2_K", "q5_k_m": "Q5_K", "q6_k": "Q6_K", "q8_0": "Q8_0"}


class Breakdown(Protocol):
    """llama.cpp's own buffer sizes (qwenkit.engines.llamacpp.dryrun.Breakdown has this shape)."""

    kv: int
    state: int
    output: dict[str, int]
    compute: dict[str, int]


DryRun = Callable[..., Breakdown]


@dataclass(frozen=True)
class Estimate:
    """Bytes by part; `total` is what must be available."""

    weights: int
    repacked: int
    kv: int
    compute: int
    output: int
    vision: int
    process: int
    source: str  # "llama.cpp dry run" or "catalogue shapes"
    device: str = "cpu"
    state: int = 0  # recurrent state of a hybrid model's linear-attention layers, checkpoints included

    @property
    def total(self) -> int:
        """Peak resident memory (what RSS shows)."""
        return sum(self.parts().values())

    @property
    def required(self) -> int:
        """What must be available: the mapped originals of repacked tensors are clean page cache that
        is never read again after load, so the kernel reclaims them under pressure without a cost."""
        return self.total - self.repacked

    def parts(self) -> dict[str, int]:
        return {
            "weights": self.weights,
            "repacked": self.repacked,
            "kv": self.kv,
            "state": self.state,
            "compute": self.compute,
            "output": self.output,
            "vision": self.vision,
            "process": self.process,
        }


def repack_types(machine: str | None = None, flags: set[str] | None = None) -> set[str]:
    """GGML types the CPU backend repacks (copies into interleaved layouts) on this CPU."""
    machine = (machine or platform.machine()).lower()
    flags = cpu_flags() if flags is None else flags
    if machine in ("x86_64", "amd64"):
        types = {"Q4_0", "Q4_K", "IQ4_NL", "MXFP4"} if "avx2" in flags else set()
        return types | ({"Q2_K"} if "avx512f" in flags else set())
    if machine in ("aarch64", "arm64"):
        if "i8mm" in flags:
            return {"Q4_0", "Q4_K", "Q5_K", "Q6_K", "Q8_0", "IQ4_NL"}
        if "asimddp" in flags or "dotprod" in flags:
            return {"Q4_0", "Q4_K", "Q5_K", "Q6_K", "Q8_0", "IQ4_NL", "MXFP4"}
    return set()


def cpu_flags() -> set[str]:
    """The CPU feature flags from /proc/cpuinfo (empty where there is none)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return set(value.split())
    return set()


def kv_bytes(shape: Shape, n_ctx: int, n_parallel: int, type_k: str = "f16", type_v: str = "f16") -> int:
    """KV cache bytes: every slot holds `n_ctx` cells (rounded up to 256, as llama.cpp pads)."""
    for t in (type_k, type_v):
        if t not in KV_TYPE_BYTES:
            raise QwenkitError(f"unknown KV cache type {t!r} (known: {', '.join(KV_TYPE_BYTES)})")
    cells = _pad(n_ctx, 256) * n_parallel
    per_cell = (
        shape.attention_layers * shape.kv_heads * shape.head_dim * (KV_TYPE_BYTES[type_k] + KV_TYPE_BYTES[type_v])
    )
    return math.ceil(cells * per_cell)


def state_bytes(shape: Shape, n_parallel: int, ctx_checkpoints: int = 0) -> int:
    """A hybrid model's recurrent state: f32 (llama.cpp's type_r and type_s) per linear-attention
    layer and slot, plus `ctx_checkpoints` saved copies per slot; 0 for a transformer."""
    if shape.linear is None:
        return 0
    if ctx_checkpoints < 0:
        raise QwenkitError("the number of context checkpoints cannot be negative")
    per_sequence = shape.recurrent_layers * shape.linear.state_elements() * 4
    return per_sequence * n_parallel * (1 + ctx_checkpoints)


def compute_bytes(shape: Shape, n_ctx: int, n_parallel: int) -> int:
    """The compute buffer of a full ubatch with flash attention and one logits row per slot. A MoE
    token holds its experts' gate/up rows, the shared expert's, the router's logits and each
    selected expert's down-projection output (n_embd x n_expert_used, before they are summed); a
    DeltaNet layer its q, k, v three times over (convolved, normalised, chunked) and its rows of the 64-token chunks'
    attention per value head, which is what binds for a small dense hybrid (Qwen3.5-0.8B)."""
    if shape.is_moe:
        experts = shape.active_experts * shape.expert_ffn + shape.shared_expert_ffn
        per_token = 3 * experts + shape.experts + shape.active_experts * shape.hidden + 4 * shape.hidden
    else:
        per_token = 3 * shape.ffn + 4 * shape.hidden
    if shape.linear is not None:
        per_token = max(per_token, 3 * shape.linear.conv_channels + 4 * DELTA_CHUNK * shape.linear.value_heads)
    activations = 4 * N_UBATCH * per_token
    mask = 2 * N_UBATCH * _pad(n_ctx, 256)
    return activations + mask + 4 * shape.vocab * (n_parallel + SCORED_ROWS)


def graph_bytes(n_tensors: int, *, hybrid: bool, n_ubatch: int = N_UBATCH) -> int:
    """The compute graphs' metadata llama.cpp allocates for a model of `n_tensors` tensors
    (llama_context::graph_max_nodes)."""
    nodes = max(40 * n_ubatch, 32 * n_tensors) if hybrid else max(1024, 8 * n_tensors)
    return GRAPHS * NODE_BYTES * nodes


def tensor_count(shape: Shape) -> int:
    """The tensors of a GGUF of `shape`, as llama.cpp's loaders create them."""
    per_mlp = (4 + (4 if shape.shared_expert_ffn else 0)) if shape.is_moe else 3  # router + experts (+ shared)
    attention = 2 + 4 + (2 if shape.qk_norm else 0) + (3 if shape.qkv_bias else 0) + per_mlp
    linear = 2 + 9 + per_mlp  # norms, qkv, z gate, conv1d, dt, A, beta, alpha, gated norm, out
    return 3 + shape.attention_layers * attention + shape.recurrent_layers * linear


def tower_bytes(tower: Tower | None, *, weights: bool = True, n_ubatch: int = N_UBATCH) -> int:
    """The projector GGUF (f16) unless the weights are counted elsewhere, and the encoder's compute buffer."""
    if tower is None:
        return 0
    return (2 * tower.params() if weights else 0) + 4 * 4 * n_ubatch * (tower.ffn + 4 * tower.hidden)


def process_bytes(vocab: int, *, server: bool) -> int:
    return PROCESS_BASE + (SERVER_EXTRA if server else 0) + VOCAB_BYTES_PER_TOKEN * vocab


def estimate_variant(
    cat: Catalog,
    variant: Variant,
    *,
    n_ctx: int,
    n_parallel: int = 1,
    device: str = "cpu",
    type_k: str = "f16",
    type_v: str = "f16",
    server: bool = False,
    ctx_checkpoints: int = 0,
) -> Estimate:
    """The estimate for a catalogue variant, from its listed file size or its shapes
    (`ctx_checkpoints`: recurrent-state copies kept per slot, for hybrid models)."""
    entry = variant.entry
    shape = cat.shape(entry)
    weights = variant.known_size or weight_bytes(shape, variant, cat.params(entry) - _tower_params(cat, variant))
    repacked = 0
    if device == "cpu" and variant.format == "gguf" and _BODY_TYPE.get(variant.quant) in repack_types():
        repacked = _repacked_estimate(shape, variant.quant)
    process = process_bytes(shape.vocab, server=server)
    if device == "cuda":
        process += CUDA_CONTEXT
    if variant.format == "hf":  # transformers: weights in their dtype, plus the framework
        process += 400 * MIB
    return Estimate(
        weights=weights,
        repacked=repacked,
        kv=kv_bytes(shape, n_ctx, n_parallel, type_k, type_v),
        compute=compute_bytes(shape, n_ctx, n_parallel) + graph_bytes(tensor_count(shape), hybrid=shape.is_hybrid),
        output=4 * shape.vocab * n_parallel,
        vision=tower_bytes(cat.tower(entry), weights=variant.format == "gguf"),  # a checkpoint holds its tower
        process=process,
        source="catalogue shapes",
        device=device,
        state=state_bytes(shape, n_parallel, ctx_checkpoints),
    )


def weight_bytes(shape: Shape, variant: Variant, lm_params: int) -> int:
    """A file's size where the catalogue does not list it: per tensor class, as llama.cpp's
    quantizer assigns types (token embeddings at the base type, lm_head at Q6_K below Q8_0),
    taken `ESTIMATE_MARGIN` high."""
    bpw = variant.bits_per_weight
    embd = shape.vocab * shape.hidden
    head_bpw = max(bpw, 6.5625) if variant.format == "gguf" else bpw
    body = lm_params - embd * (1 if shape.tied else 2)
    total = embd * bpw + embd * head_bpw + body * bpw  # lm_head counted even when tied: older GGUFs store it
    if variant.quant.startswith("gptq") and shape.is_hybrid:
        # Qwen's GPTQ checkpoints of hybrid models keep embeddings, lm_head, attention, DeltaNet
        # and shared experts in bf16: only the (routed) experts or dense MLPs are quantized
        kept = (
            lm_params - shape.layers * shape.mlp_params() + shape.layers * (3 * shape.hidden * shape.shared_expert_ffn)
        )
        total += kept * (16 - bpw)
    return math.ceil(total / 8 * ESTIMATE_MARGIN)


def _repacked_estimate(shape: Shape, quant: str) -> int:
    """Bytes of the body's matmul weights at the quant's base type (q4_k_m keeps half of attn_v
    and ffn_down at Q6_K)."""
    body = shape.blocks_params()
    if quant == "q4_k_m":
        down = shape.hidden * (shape.ffn or shape.experts * shape.expert_ffn)
        body -= shape.layers * down // 2 + shape.attention_layers * shape.hidden * shape.kv_heads * shape.head_dim // 2
    bpw = {"Q4_0": 4.5, "Q4_K": 4.5, "Q2_K": 2.625, "Q5_K": 5.5, "Q6_K": 6.5625, "Q8_0": 8.5}[_BODY_TYPE[quant]]
    return math.ceil(body * bpw / 8)


def _tower_params(cat: Catalog, variant: Variant) -> int:
    tower = cat.tower(variant.entry)
    return tower.params() if tower is not None and variant.format == "gguf" else 0


def estimate_gguf(
    path: str | Path,
    *,
    n_ctx: int,
    n_parallel: int = 1,
    server: bool = False,
    dry_run: DryRun | None = None,
    ctx_checkpoints: int = 0,
) -> Estimate:
    """The estimate for a GGUF on disk: file sizes, repacked tensors from its tensor types, and
    (when `dry_run` is given, e.g. qwenkit.engines.llamacpp.dryrun.dry_run) llama.cpp's own KV,
    recurrent-state, compute and output buffer sizes; without it, the same from the file's
    metadata (a hybrid's `ssm.*` keys). `ctx_checkpoints` recurrent-state copies are kept per slot."""
    path = Path(path)
    files = [path.with_name(n) for n in shard_names(path.name)]
    weights = sum(f.stat().st_size for f in files)
    repackable = repack_types()
    repacked, meta = 0, _Meta()
    for f in files:
        repacked += _scan(f, repackable, meta)
    shape = meta.shape()
    kv = kv_bytes(shape, n_ctx, n_parallel)
    state = state_bytes(shape, n_parallel, ctx_checkpoints)
    graphs = graph_bytes(meta.tensors, hybrid=shape.is_hybrid)
    compute = compute_bytes(shape, n_ctx, n_parallel) + graphs
    output = 4 * shape.vocab * n_parallel
    source = "GGUF metadata"
    if dry_run is not None:
        b = dry_run(path, n_ctx=n_ctx, n_parallel=n_parallel)
        kv, compute, output = b.kv, sum(b.compute.values()) + graphs, sum(b.output.values())
        state = b.state + ctx_checkpoints * state_bytes(shape, n_parallel)  # checkpoints live outside llama.cpp
        source = "llama.cpp dry run"
    process = process_bytes(shape.vocab, server=server)
    return Estimate(weights, repacked, kv, compute, output, 0, process, source, state=state)


class _Meta:
    """The few GGUF metadata values the formula needs (from the first shard)."""

    def __init__(self) -> None:
        self.values: dict[str, int] = {}
        self.vocab = 0
        self.tensors = 0

    def shape(self) -> Shape:
        v = self.values
        try:
            heads = v["attention.head_count"]
            hidden = v["embedding_length"]
            return Shape(
                layers=v["block_count"] - v.get("nextn_predict_layers", 0),
                hidden=hidden,
                heads=heads,
                kv_heads=v.get("attention.head_count_kv", heads),
                head_dim=v.get("attention.key_length", hidden // heads),
                ffn=0 if v.get("expert_count") else v.get("feed_forward_length", 0),
                experts=v.get("expert_count", 0),
                active_experts=v.get("expert_used_count", 0),
                expert_ffn=v.get("expert_feed_forward_length", 0),
                shared_expert_ffn=v.get("expert_shared_feed_forward_length", 0),
                vocab=self.vocab,
                tied=False,
                qkv_bias=False,
                qk_norm=False,
                linear=self._linear(),
            )
        except (KeyError, ValueError, ZeroDivisionError) as e:
            raise QwenkitError(f"this GGUF lacks the metadata a memory estimate needs ({e})") from None

    def _linear(self) -> LinearAttention | None:
        """A hybrid's gated DeltaNet layers from the keys llama.cpp's qwen35/qwen3next loaders read:
        ssm.state_size is the key (and value) head dim, group_count the key heads, time_step_rank
        the value heads, inner_size value heads x value head dim; every `full_attention_interval`-th
        layer (4 where the key is absent, as llama.cpp assumes) has attention."""
        v = self.values
        if "ssm.inner_size" not in v or "ssm.group_count" not in v:
            return None  # a transformer, or a Mamba-style model whose state qwenkit does not estimate
        value_heads = v["ssm.time_step_rank"]
        return LinearAttention(
            full_attention_interval=v.get("full_attention_interval", 4),
            key_heads=v["ssm.group_count"],
            value_heads=value_heads,
            key_head_dim=v["ssm.state_size"],
            value_head_dim=v["ssm.inner_size"] // value_heads,
            conv_kernel=v["ssm.conv_kernel"],
        )


def _scan(path: Path, repackable: set[str], meta: _Meta) -> int:
    """Bytes of `path`'s matmul tensors the CPU backend repacks; fills `meta` from its metadata."""
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

    try:
        values, tensors = scan(path)
    except (OSError, ValueError, struct.error) as e:
        raise QwenkitError(f"cannot read {path.name} for a memory estimate: {e}") from None
    arch = values.get("general.architecture")
    if isinstance(arch, str):
        for key, value in values.items():
            if key.startswith(arch + ".") and isinstance(value, int):
                meta.values[key[len(arch) + 1 :]] = value
    tokens = values.get("tokenizer.ggml.tokens")
    if isinstance(tokens, int):
        meta.vocab = tokens
    meta.tensors += len(tensors)
    total = 0
    for t in tensors:
        name = _GGML_TYPES.get(t.ggml_type)
        # token_embd feeds GET_ROWS, which repacked buffers do not serve: it stays mapped only
        if name in repackable and t.name != "token_embd.weight" and len(t.shape) >= 2 and t.shape[1] % 8 == 0:
            block, size = GGML_QUANT_SIZES[GGMLQuantizationType(t.ggml_type)]
            total += math.prod(t.shape) // block * size
    return total


def _pad(n: int, to: int) -> int:
    return -(-n // to) * to
