"""The Qwen family as data (`qwen.toml`), a memory estimate, and recommendations.

`catalog()` is the validated family; `Catalog.variant("qwen3-8b:q4_k_m")` a downloadable form.
This package imports only `qwenkit.store` and `qwenkit.errors` below it.
"""

from __future__ import annotations

from qwenkit.catalog.family import Catalog, Variant, catalog
from qwenkit.catalog.schema import Entry, Shape, Tower

__all__ = ["Catalog", "Entry", "Shape", "Tower", "Variant", "catalog"]
