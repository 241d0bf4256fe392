"""Common accelerators as data (`accelerators.toml`): memory and published bandwidth, with sources.

`find("rtx4090")` is a part named on the command line (`recommend --gpu`); `match(name, total)`
the part a detected device name (torch, nvidia-smi, sysctl) is.
"""

from __future__ import annotations

import re
import tomllib
from functools import cache
from importlib import resources
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from qwenkit.errors import QwenkitError


class Accelerator(BaseModel):
    """One GPU or Apple chip: what it is called, what it ships with, and how fast its memory reads."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    ids: list[str] = Field(min_length=1)
    match: str
    kind: Literal["cuda", "mps"]
    memory_gib: list[float] = Field(min_length=1)
    bandwidth_gbs: float = Field(gt=0)
    source: str = Field(min_length=8)


def _key(text: str) -> str:
    return re.sub(r"[^a-z0-9]", "", text.lower())


@cache
def accelerators() -> tuple[Accelerator, ...]:
    """Every part in the table (validated once)."""
    text = resources.files("qwenkit.catalog").joinpath("accelerators.toml").read_text(encoding="utf-8")
    try:
        rows = tuple(Accelerator.model_validate(row) for row in tomllib.loads(text)["accelerator"])
    except (ValidationError, KeyError, tomllib.TOMLDecodeError) as exc:
        raise QwenkitError(f"accelerators.toml is invalid: {exc}") from None
    ids = [i for row in rows for i in row.ids]
    if len(ids) != len(set(ids)) or any(i != _key(i) for i in ids):
        raise QwenkitError("accelerators.toml: every id must be unique, lowercase letters and digits")
    return rows


def find(name: str) -> Accelerator:
    """The part `name` (`rtx4090`, `RTX 4090`, `h100`, `m3-pro`) names, or a one-line error."""
    key = _key(name)
    for row in accelerators():
        if key in row.ids:
            return row
    known = ", ".join(row.ids[0] for row in accelerators())
    raise QwenkitError(f"unknown GPU {name!r}; the table knows: {known} (or give --bandwidth)")


def match(kind: str, device_name: str, total_bytes: int = 0) -> Accelerator | None:
    """The `kind` part a detected device is: the longest `match` in its name, then the closest memory."""
    lowered = device_name.lower()
    rows = [row for row in accelerators() if row.kind == kind]
    hits = [row for row in rows if re.search(rf"(?<![a-z0-9]){re.escape(row.match.lower())}", lowered)]
    if not hits:
        return None
    longest = max(len(row.match) for row in hits)
    hits = [row for row in hits if len(row.match) == longest]
    gib = total_bytes / 2**30
    return min(hits, key=lambda row: min(abs(m - gib) for m in row.memory_gib))
