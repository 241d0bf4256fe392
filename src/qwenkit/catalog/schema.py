"""The catalogue's schema: pydantic models that validate `qwen.toml` at load."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

Specialty = Literal[
    "chat", "code", "math", "reasoning", "vision", "audio", "tools", "multilingual", "embedding", "rerank"
]
Thinking = Literal["hybrid", "thinking-only", "none"]
CheckpointKind = Literal["awq", "gptq-int4", "gptq-int8", "fp8"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


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
    confirmed: bool = True
    note: str | None = None

    @model_validator(mode="after")
    def _dense_or_moe(self) -> Shape:
        if (self.ffn > 0) == (self.experts > 0):
            raise ValueError("a shape has either ffn (dense) or experts (MoE), not both or neither")
        if self.experts and not (0 < self.active_experts <= self.experts and self.expert_ffn > 0):
            raise ValueError("a MoE shape needs 0 < active_experts <= experts and expert_ffn > 0")
        if self.heads % self.kv_heads:
            raise ValueError("heads must be a multiple of kv_heads")
        return self

    @property
    def is_moe(self) -> bool:
        return self.experts > 0

    def layer_params(self, *, active: bool = False) -> int:
        """Parameters of one transformer block (with only the active experts if `active`)."""
        h, q, kv = self.hidden, self.heads * self.head_dim, self.kv_heads * self.head_dim
        attn = h * q + 2 * h * kv + q * h
        if self.qkv_bias:
            attn += q + 2 * kv
        if self.qk_norm:
            attn += 2 * self.head_dim
        if self.is_moe:
            n = self.active_experts if active else self.experts
            mlp = n * 3 * h * self.expert_ffn + h * self.experts  # experts + router
        else:
            mlp = 3 * h * self.ffn  # SwiGLU: gate, up, down
        return attn + mlp + 2 * h  # two RMSNorms

    def embedding_params(self) -> int:
        """Token embeddings plus the lm_head when it is not tied to them."""
        return self.vocab * self.hidden * (1 if self.tied else 2)

    def params(self, *, active: bool = False) -> int:
        """All parameters of the language model (per token, if `active`, for MoE)."""
        return self.embedding_params() + self.layers * self.layer_params(active=active) + self.hidden


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


class Retrieval(_Strict):
    """An embedding or reranking model: what it outputs, as its model card states it."""

    kind: Literal["embedding", "reranker"]
    dimensions: int = Field(0, ge=0)  # embedding: the full output size (the last hidden state's)
    mrl_min: int = Field(0, ge=0)  # embedding: the smallest Matryoshka (MRL) size it supports
    pooling: Literal["last"] = "last"  # the hidden state of the last token (the appended end-of-text)
    confirmed: bool = True
    note: str | None = None

    @model_validator(mode="after")
    def _sizes(self) -> Retrieval:
        if (self.kind == "embedding") != (0 < self.mrl_min <= self.dimensions):
            raise ValueError("an embedding model needs 0 < mrl_min <= dimensions; a reranker neither")
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
    note: str | None = None
    gguf: GGUFSource | None = None
    pypi: dict[str, str] = {}
    checkpoints: dict[CheckpointKind, str] = {}
    retrieval: Retrieval | None = None  # embedding and reranking models only

    @property
    def max_context(self) -> int:
        return max(self.context, self.context_yarn)


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
