"""The catalogue's schema: pydantic models that validate `qwen.toml` at load."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

Specialty = Literal["chat", "code", "math", "reasoning", "vision", "audio", "tools", "multilingual"]
Thinking = Literal["hybrid", "thinking-only", "none"]
CheckpointKind = Literal["awq", "gptq-int4", "gptq-int8", "fp8"]
# what a published size is beyond the shapes' count: it holds a tower they do not model, or it is a rounded name (A3B)
SizeExtra = Literal["vision tower", "rounded"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class LinearAttention(_Strict):
    """The gated DeltaNet layers of a hybrid model (Qwen3.5, Qwen3-Next): every layer but each
    `full_attention_interval`-th is one, with a fixed-size recurrent state instead of a KV cache."""

    full_attention_interval: int = Field(gt=1)
    key_heads: int = Field(gt=0)  # linear_num_key_heads
    value_heads: int = Field(gt=0)  # linear_num_value_heads
    key_head_dim: int = Field(gt=0)
    value_head_dim: int = Field(gt=0)
    conv_kernel: int = Field(gt=1)  # linear_conv_kernel_dim

    @property
    def conv_channels(self) -> int:
        """Channels of the short convolution over q, k and v."""
        return 2 * self.key_heads * self.key_head_dim + self.value_heads * self.value_head_dim

    def layer_params(self, hidden: int) -> int:
        """in_proj_qkv, in_proj_z, in_proj_a/b, conv1d, dt_bias, A_log, the gated norm, out_proj."""
        inner = self.value_heads * self.value_head_dim
        conv = self.conv_channels
        return (
            hidden * conv
            + hidden * inner
            + 2 * hidden * self.value_heads
            + conv * self.conv_kernel
            + 2 * self.value_heads
            + self.value_head_dim
            + inner * hidden
        )

    def state_elements(self) -> int:
        """Recurrent state of one layer for one sequence, as llama.cpp keeps it: the convolution's
        last kernel-1 inputs (n_embd_r) plus one key_dim x value_dim matrix per value head (n_embd_s)."""
        conv = (self.conv_kernel - 1) * self.conv_channels
        delta = self.key_head_dim * self.value_heads * self.value_head_dim
        return conv + delta


class Shape(_Strict):
    """A language model's shapes, as its config.json states them."""

    layers: int = Field(gt=0)
    hidden: int = Field(gt=0)
    heads: int = Field(gt=0)
    kv_heads: int = Field(gt=0)
    head_dim: int = Field(gt=0)  # from the config: Qwen3's is 128 where hidden/heads is 64 or 80
    ffn: int = Field(ge=0)  # dense intermediate size; 0 for MoE
    experts: int = Field(0, ge=0)
    active_experts: int = Field(0, ge=0)
    expert_ffn: int = Field(0, ge=0)
    vocab: int = Field(gt=0)
    tied: bool
    qkv_bias: bool
    qk_norm: bool
    shared_expert_ffn: int = Field(0, ge=0)  # MoE with one always-active shared expert (and its gate)
    gated_attention: bool = False  # attn_output_gate: q_proj also emits a sigmoid gate per head
    linear: LinearAttention | None = None  # hybrid models: the linear-attention layers
    confirmed: bool = True
    unconfirmed: list[str] = []  # fields not read from an official config.json
    note: str | None = None

    @model_validator(mode="after")
    def _dense_or_moe(self) -> Shape:
        if (self.ffn > 0) == (self.experts > 0):
            raise ValueError("a shape has either ffn (dense) or experts (MoE), not both or neither")
        if self.experts and not (0 < self.active_experts <= self.experts and self.expert_ffn > 0):
            raise ValueError("a MoE shape needs 0 < active_experts <= experts and expert_ffn > 0")
        if self.heads % self.kv_heads:
            raise ValueError("heads must be a multiple of kv_heads")
        if unknown := set(self.unconfirmed) - set(type(self).model_fields):
            raise ValueError(f"unconfirmed names unknown fields: {sorted(unknown)}")
        return self

    @property
    def is_moe(self) -> bool:
        return self.experts > 0

    @property
    def is_hybrid(self) -> bool:
        return self.linear is not None

    @property
    def attention_layers(self) -> int:
        """Layers with a KV cache: all of them, or each `full_attention_interval`-th of a hybrid."""
        return self.layers // self.linear.full_attention_interval if self.linear else self.layers

    @property
    def recurrent_layers(self) -> int:
        """Linear-attention layers, each with a fixed-size recurrent state per sequence."""
        return self.layers - self.attention_layers

    def attention_params(self) -> int:
        """One full-attention block's attention (q with its gate where gated, k, v, o, norms, biases)."""
        h, q, kv = self.hidden, self.heads * self.head_dim, self.kv_heads * self.head_dim
        attn = h * q * (2 if self.gated_attention else 1) + 2 * h * kv + q * h
        if self.qkv_bias:
            attn += q + 2 * kv
        if self.qk_norm:
            attn += 2 * self.head_dim
        return attn

    def mlp_params(self, *, active: bool = False) -> int:
        """One block's feed-forward part (with only the active experts if `active`)."""
        h = self.hidden
        if self.is_moe:
            n = self.active_experts if active else self.experts
            shared = 3 * h * self.shared_expert_ffn + h if self.shared_expert_ffn else 0  # expert + its gate
            return n * 3 * h * self.expert_ffn + h * self.experts + shared  # experts + router
        return 3 * h * self.ffn  # SwiGLU: gate, up, down

    def layer_params(self, *, active: bool = False) -> int:
        """Parameters of one full-attention block (with only the active experts if `active`)."""
        return self.attention_params() + self.mlp_params(active=active) + 2 * self.hidden  # two RMSNorms

    def blocks_params(self, *, active: bool = False) -> int:
        """All blocks: full-attention ones and, in a hybrid, the linear-attention ones."""
        full = self.attention_layers * self.layer_params(active=active)
        if self.linear is None:
            return full
        linear = self.linear.layer_params(self.hidden) + self.mlp_params(active=active) + 2 * self.hidden
        return full + self.recurrent_layers * linear

    def embedding_params(self) -> int:
        """Token embeddings plus the lm_head when it is not tied to them."""
        return self.vocab * self.hidden * (1 if self.tied else 2)

    def params(self, *, active: bool = False) -> int:
        """All parameters of the language model (per token, if `active`, for MoE)."""
        return self.embedding_params() + self.blocks_params(active=active) + self.hidden


class Tower(_Strict):
    """A vision (ViT + patch merger) or audio (Whisper encoder + projector) tower."""

    kind: Literal["image", "audio"]
    depth: int = Field(gt=0)
    hidden: int = Field(gt=0)
    heads: int = Field(gt=0)
    ffn: int = Field(gt=0)
    patch: int = Field(ge=0)
    merge: int = Field(ge=1)
    swiglu: bool
    out_hidden: int = Field(gt=0)
    confirmed: bool = True
    note: str | None = None

    def params(self) -> int:
        """Parameters of the tower and its projection into the language model."""
        h, f = self.hidden, self.ffn
        mlp = 3 * h * f + 2 * f + h if self.swiglu else 2 * h * f + f + h
        block = 4 * h * h + 4 * h + mlp + 2 * h
        if self.kind == "image":
            stem = 3 * 2 * self.patch * self.patch * h  # Conv3d over 2 frames
            merged = h * self.merge * self.merge
            head = h + merged * merged + merged + merged * self.out_hidden + self.out_hidden
        else:
            stem = 128 * h * 3 + h + h * h * 3 + h + 1500 * h  # two convs over mel bins, positions
            head = 2 * h + h * self.out_hidden + self.out_hidden
        return stem + self.depth * block + head


class GGUFSource(_Strict):
    """A repo of GGUF files: quant -> file name (a split GGUF names its first shard)."""

    repo: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")
    files: dict[str, str]
    sizes: dict[str, int] = {}
    mmproj: dict[str, str] = {}
    confirmed: bool = True
    note: str | None = None

    @model_validator(mode="after")
    def _consistent(self) -> GGUFSource:
        for name in [*self.files.values(), *self.mmproj.values()]:
            if not name.endswith(".gguf"):
                raise ValueError(f"{name!r} is not a .gguf file name")
        if unknown := set(self.sizes) - set(self.files):
            raise ValueError(f"sizes for quants without a file: {sorted(unknown)}")
        return self


class Entry(_Strict):
    """One runnable model of the family."""

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9.-]*$")
    family: str
    hf: str
    modelscope: str | None = None
    shape: str
    vision: str | None = None
    params_b: float = Field(gt=0)  # published size, billions
    active_params_b: float | None = Field(None, gt=0)  # MoE: published parameters per token
    context: int = Field(gt=0)  # native
    context_yarn: int = Field(0, ge=0)  # with YaRN rope scaling; 0: not supported
    license: str
    specialties: list[Specialty]
    thinking: Thinking
    opens_thinking: bool = False  # the template's generation prompt opens <think> itself
    size_counts: list[SizeExtra] = []  # what the published size counts beyond the shapes
    note: str | None = None
    gguf: GGUFSource | None = None
    pypi: dict[str, str] = {}
    checkpoints: dict[CheckpointKind, str] = {}
    unconfirmed: list[str] = []  # fields (or `checkpoints.fp8`, `gguf.files`) not confirmed from an official source

    @property
    def max_context(self) -> int:
        return max(self.context, self.context_yarn)

    @model_validator(mode="after")
    def _unconfirmed_fields(self) -> Entry:
        roots = {name.partition(".")[0] for name in self.unconfirmed}
        if unknown := roots - set(type(self).model_fields):
            raise ValueError(f"unconfirmed names unknown fields: {sorted(unknown)}")
        if self.thinking == "none" and self.opens_thinking:
            raise ValueError("a model without thinking cannot open it in its prompt")
        return self


class CatalogData(_Strict):
    """The whole file: shapes and towers by name, then the models that use them."""

    shapes: dict[str, Shape]
    vision: dict[str, Tower] = {}
    models: list[Entry]

    @model_validator(mode="after")
    def _references(self) -> CatalogData:
        seen: set[str] = set()
        for m in self.models:
            if m.name in seen:
                raise ValueError(f"duplicate model name {m.name!r}")
            seen.add(m.name)
            if m.shape not in self.shapes:
                raise ValueError(f"{m.name}: unknown shape {m.shape!r}")
            if m.vision is not None and m.vision not in self.vision:
                raise ValueError(f"{m.name}: unknown tower {m.vision!r}")
            if m.pypi and (m.gguf is None or not set(m.pypi) <= set(m.gguf.files)):
                raise ValueError(f"{m.name}: a PyPI-assembled quant must also be one of its GGUF quants")
        return self
