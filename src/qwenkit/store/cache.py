"""The cache under `home()`: layout, per-model locks, verification stamps and atomic publish.

Layout: `home()/models/<name>/<file>.gguf` for embedded models, `home()/hf/<owner>/<repo>/...`
for Hugging Face downloads. Beside each verified GGUF sits `<file>.verified.json` recording the
size, mtime and sha256 it had when last hashed, so a later check can skip re-hashing.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO

from filelock import FileLock, Timeout
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

log = logging.getLogger("qwenkit.store")
CHUNK = 1 << 20


def home() -> Path:
    """The cache root: `$QWENKIT_HOME`, else `~/.cache/qwenkit`."""
    return Path(os.environ.get("QWENKIT_HOME") or "~/.cache/qwenkit").expanduser().resolve()


def models_dir() -> Path:
    """Where embedded models are assembled."""
    return home() / "models"


def hf_dir() -> Path:
    """Where Hugging Face downloads go."""
    return home() / "hf"


@contextmanager
def locked(lock_file: Path, what: str) -> Iterator[None]:
    """Hold the inter-process lock `lock_file` (others wait); say on stderr when we have to wait."""
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(lock_file)
    try:
        lock.acquire(timeout=0.5)
    except Timeout:
        log.warning("waiting for another process fetching %s", what)
        lock.acquire()
    try:
        yield
    finally:
        lock.release()


def progress_bars(enabled: bool) -> Progress:
    """Byte progress bars on stderr; shown if `enabled` and stderr is a terminal or QWENKIT_PROGRESS=1."""
    show = enabled and (sys.stderr.isatty() or os.environ.get("QWENKIT_PROGRESS") == "1")
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        disable=not show,
    )


def sha256_file(path: Path, bars: Progress) -> str:
    """Hash `path` in chunks, advancing a "verifying" bar."""
    task = bars.add_task(f"verify {path.name}", total=path.stat().st_size)
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
            bars.advance(task, len(chunk))
    return h.hexdigest()


def _stamp_path(path: Path) -> Path:
    return path.with_name(path.name + ".verified.json")


def read_stamp(path: Path) -> dict[str, Any] | None:
    """The stamp beside `path` ({"size", "mtime_ns", "sha256"}), or None if missing or unreadable."""
    try:
        stamp = json.loads(_stamp_path(path).read_text())
    except (OSError, ValueError):
        return None
    return stamp if isinstance(stamp, dict) else None


def write_stamp(path: Path, sha256: str) -> None:
    """Record that `path`, as it is now on disk, has been hashed to `sha256`."""
    st = path.stat()
    stamp = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": sha256}
    with atomic_file(_stamp_path(path)) as f:
        f.write(json.dumps(stamp).encode())


def remove(path: Path) -> None:
    """Delete `path` and its stamp."""
    path.unlink(missing_ok=True)
    _stamp_path(path).unlink(missing_ok=True)


def stamped(path: Path, sha256: str, size: int | None = None) -> bool:
    """True if the stamp says `path` has content `sha256` and the file's size and mtime still match."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return False
    if size is not None and st.st_size != size:
        return False
    return read_stamp(path) == {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": sha256}


def verify(path: Path, sha256: str, size: int | None, *, full: bool, bars: Progress) -> bool:
    """True if `path` has content `sha256` (and `size`): by its stamp unless `full`, else by hashing.

    A file that hashes correctly is re-stamped.
    """
    if not full and stamped(path, sha256, size):
        return True
    if not path.is_file() or (size is not None and path.stat().st_size != size):
        return False
    if sha256_file(path, bars) != sha256:
        return False
    write_stamp(path, sha256)
    return True


@contextmanager
def atomic_file(dest: Path) -> Iterator[BinaryIO]:
    """A temp file beside `dest`, moved onto `dest` if the block succeeds and deleted if not."""
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".tmp")
    os.fchmod(fd, 0o644)
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, dest)
    finally:
        Path(tmp).unlink(missing_ok=True)


def clean_temp(dest: Path) -> None:
    """Remove temp files left beside `dest` by an interrupted `atomic_file` (call under the lock)."""
    for stale in dest.parent.glob(f".{dest.name}.*.tmp"):
        stale.unlink(missing_ok=True)
