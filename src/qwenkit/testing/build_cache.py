"""Build-once caching for the tiny test models, shared by `tiny`, `tiny_hf` and `tiny_vl`.

A model's cache key covers its builder's parameters (defaults filled in) and the builder's source;
`build_once` builds under a file lock into a temporary directory and moves the result into place
with an atomic rename, so concurrent test processes build each model once and never see half of one.
"""

from __future__ import annotations

import hashlib
import inspect
import os
import shutil
import tempfile
from collections.abc import Callable, Collection, Mapping
from functools import lru_cache
from pathlib import Path
from typing import Any

from filelock import FileLock


@lru_cache(maxsize=8)
def source_digest(*files: Path) -> str:
    """A short digest of the builder modules' sources (a changed builder builds anew)."""
    digest = hashlib.sha256()
    for file in files:
        digest.update(file.read_bytes())
    return digest.hexdigest()[:16]


def build_params(builder: Callable[..., Any], params: Mapping[str, Any], *, fixed: Collection[str]) -> dict[str, Any]:
    """`params` over `builder`'s keyword-only defaults (so seed=0 and no seed share one key), the
    `fixed` ones (passed apart) left out; TypeError for a parameter the builder does not take."""
    defaults = {
        name: p.default
        for name, p in inspect.signature(builder).parameters.items()
        if p.kind is inspect.Parameter.KEYWORD_ONLY and name not in fixed
    }
    unknown = set(params) - set(defaults)
    if unknown:
        raise TypeError(f"unknown build parameters: {', '.join(sorted(unknown))}")
    return {**defaults, **params}


def build_once(out: Path, done: Path, build: Callable[[Path], Path], *, timeout: float = 900) -> None:
    """Run ``build(tmp_dir) -> built`` under a lock unless ``done`` exists; move ``built`` to ``out``."""
    if done.exists():
        return
    with FileLock(str(out) + ".lock", timeout=timeout):
        if done.exists():
            return
        if out.is_dir():
            shutil.rmtree(out)
        tmp = Path(tempfile.mkdtemp(prefix=out.name + ".", suffix=".tmp", dir=out.parent))
        try:
            os.replace(build(tmp), out)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
