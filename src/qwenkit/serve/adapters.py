"""LoRA adapters over the served model: which one a request selects, and how they are listed.

As vLLM does, a request selects an adapter by naming it in `model`; as llama-server does, it may
instead give `lora: [{"id": i, "scale": s}]`, ids counting the `--lora` adapters in order (an
adapter not listed gets scale 0, as there). `/v1/models` lists each adapter with `parent` set to
the base model and `root` to its file.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from qwenkit.engines.base import Adapters
from qwenkit.serve.http_errors import ApiError
from qwenkit.serve.protocol import LoraScale, ModelCard


@dataclass(frozen=True)
class Target:
    """What a request runs on: the name responses report and the adapters applied."""

    name: str
    adapters: Adapters = ()


def select(
    base_name: str, lora_files: Sequence[tuple[str, str]], model: str | None, lora: list[LoraScale] | None
) -> Target:
    """The target of a request naming `model` and, optionally, llama-server's `lora` list."""
    names = [name for name, _ in lora_files]
    if lora is not None:
        for entry in lora:
            if not 0 <= entry.id < len(names):
                raise ApiError(400, f"lora id {entry.id} is not loaded (ids 0..{len(names) - 1})", param="lora")
        adapters = tuple((names[e.id], e.scale) for e in lora if e.scale != 0)
        return Target(model if model in names else base_name, adapters)
    if model in names:
        return Target(model, ((model, 1.0),))
    return Target(base_name)


def cards(base_name: str, lora_files: Sequence[tuple[str, str]]) -> list[ModelCard]:
    """The base model, then one card per adapter with `parent` = the base."""
    return [ModelCard(id=base_name)] + [ModelCard(id=name, parent=base_name, root=path) for name, path in lora_files]
