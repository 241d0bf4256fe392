"""The loaded catalogue: entries, their shapes and towers, and `name:quant` variants."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from functools import cache
from importlib.resources import files
from typing import Literal

from pydantic import ValidationError

from qwenkit.catalog.schema import CatalogData, Entry, Shape, Tower
from qwenkit.errors import ModelNotFound, QwenkitError

ORIGINAL = "bf16"  # the quant name of a model's original checkpoint repo
# Bits per weight of a whole GGUF per quant, used only where the real file size is unknown:
# llama.cpp's K-quant mixes (block sizes from ggml-common.h: Q4_K 4.5, Q6_K 6.5625, Q8_0 8.5 ...)
# keep some tensors at higher precision, so a mix averages above its base type.
GGUF_BPW: dict[str, float] = {
    "q2_k": 3.35,
    "q3_k_m": 3.91,
    "q4_0": 4.55,
    "q4_k_m": 4.89,
    "q5_0": 5.54,
    "q5_k_m": 5.70,
    "q6_k": 6.56,
    "q8_0": 8.50,
    "fp16": 16.0,
    "f16": 16.0,
}
CHECKPOINT_BPW: dict[str, float] = {"awq": 4.25, "gptq-int4": 4.25, "gptq-int8": 8.25, "fp8": 8.0, ORIGINAL: 16.0}
ESTIMATE_MARGIN = 1.10  # an estimated (not listed) file size is taken 10% high: small models keep big embeddings


@dataclass(frozen=True)
class Variant:
    """One downloadable form of an entry: a GGUF quant, a quantized checkpoint, or the original."""

    entry: Entry
    quant: str
    format: Literal["gguf", "hf"]
    repo: str
    file: str | None = None  # GGUF: the file (first shard) in `repo`
    mmproj: str | None = None  # GGUF vision models: the projector file in `repo`
    known_size: int | None = None  # bytes, where the catalogue lists them
    pypi: str | None = None  # the embedded model of qwenkit.store holding this exact quant

    @property
    def name(self) -> str:
        return f"{self.entry.name}:{self.quant}"

    @property
    def bits_per_weight(self) -> float:
        return GGUF_BPW.get(self.quant, 16.0) if self.format == "gguf" else CHECKPOINT_BPW.get(self.quant, 16.0)


_NO_ONNX_BUILDER = {"qwen2-audio"}


class Catalog:
    """The family, validated. Names are case-insensitive; `name:quant` picks a variant."""

    def __init__(self, data: CatalogData) -> None:
        self.data = data
        self.entries = {m.name: m for m in data.models}

    def get(self, name: str) -> Entry:
        entry = self.entries.get(name.strip().lower())
        if entry is None:
            raise ModelNotFound(f"{name!r} is not in the catalogue (see `qwenkit models --all`)")
        return entry

    def shape(self, entry: Entry) -> Shape:
        return self.data.shapes[entry.shape]

    def tower(self, entry: Entry) -> Tower | None:
        return self.data.vision[entry.vision] if entry.vision else None

    def params(self, entry: Entry, *, active: bool = False) -> int:
        """Parameters from the shapes: language model plus tower."""
        tower = self.tower(entry)
        return self.shape(entry).params(active=active) + (tower.params() if tower else 0)

    def onnx_export(self, entry: Entry) -> str | None:
        """The command exporting `entry` to ONNX Runtime GenAI int4, where its model builder takes it.

        The builder converts dense Qwen2/Qwen2.5 (Coder, Math, QwQ), Qwen3 and Qwen2.5-VL
        checkpoints; it refuses mixture-of-experts and hybrid (linear-attention) models and has no
        audio tower.
        """
        shape = self.shape(entry)
        if shape.is_moe or shape.is_hybrid or entry.family in _NO_ONNX_BUILDER:
            return None
        return f"qwenkit export onnx --model {entry.name} --precision int4"

    def variants(self, entry: Entry) -> list[Variant]:
        """Every form of `entry`: GGUF quants (smallest first), then checkpoints, then the original."""
        out: list[Variant] = []
        g = entry.gguf
        if g is not None:
            mmproj = g.mmproj.get("f16") or next(iter(g.mmproj.values()), None)
            out += [
                Variant(entry, q, "gguf", g.repo, g.files[q], mmproj, g.sizes.get(q), entry.pypi.get(q))
                for q in sorted(g.files, key=lambda q: GGUF_BPW.get(q, 16.0))
            ]
        out += [Variant(entry, kind, "hf", repo) for kind, repo in entry.checkpoints.items()]
        out.append(Variant(entry, ORIGINAL, "hf", entry.hf))
        return out

    def variant(self, text: str) -> Variant:
        """`name[:quant]`; without a quant: q4_k_m where there is one, else the smallest GGUF, else the original."""
        name, _, quant = text.strip().lower().partition(":")
        entry = self.get(name)
        options = self.variants(entry)
        if not quant:
            ggufs = [v for v in options if v.format == "gguf"]
            return next((v for v in ggufs if v.quant == "q4_k_m"), ggufs[0] if ggufs else options[-1])
        for v in options:
            if v.quant == quant:
                return v
        raise ModelNotFound(f"{entry.name} has no {quant!r}; available: {', '.join(v.quant for v in options)}")

    def is_name(self, text: str) -> bool:
        """True if `text` looks like a catalogue name (`name` or `name:quant`)."""
        return text.strip().lower().partition(":")[0] in self.entries


@cache
def catalog() -> Catalog:
    """The catalogue shipped with qwenkit (`qwen.toml`), loaded and validated once."""
    raw = files("qwenkit.catalog").joinpath("qwen.toml").read_text(encoding="utf-8")
    return Catalog(parse(raw))


def parse(text: str) -> CatalogData:
    """Validate catalogue TOML; a bad file is a one-line QwenkitError naming the first problem."""
    try:
        return CatalogData.model_validate(tomllib.loads(text))
    except tomllib.TOMLDecodeError as e:
        raise QwenkitError(f"the model catalogue is not valid TOML: {e}") from None
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise QwenkitError(f"the model catalogue is invalid at {where}: {first['msg']}") from None
