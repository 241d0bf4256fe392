"""The cache of artifacts made from a model (a GGUF dequantized into a checkpoint, an ONNX export).

They live under `home()/converted/`, each a directory keyed by its source's content
(`content_key`: the store's verified sha256 of a file when it has stamped it, else the file's
path, size and mtime) and the version of what made it, so a changed source or maker gets a new
one. `publish` builds into a temporary directory beside the target and renames it into place
under a file lock, its stamp (`STAMP`) written last: a directory with a stamp is whole.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from filelock import FileLock

from qwenkit.store.cache import home, read_stamp

log = logging.getLogger("qwenkit.store")

STAMP = "qwenkit-converted.json"


def converted_root() -> Path:
    return home() / "converted"


def content_key(path: Path, *, version: int) -> str:
    """A short key for the content of the file `path` and the `version` of what is made from it."""
    st = path.stat()
    stamp = read_stamp(path)
    if stamp and stamp.get("size") == st.st_size and stamp.get("mtime_ns") == st.st_mtime_ns and stamp.get("sha256"):
        basis = f"sha256:{stamp['sha256']}"
    else:
        basis = f"file:{path.resolve()}:{st.st_size}:{st.st_mtime_ns}"
    return hashlib.sha256(f"{basis}:v{version}".encode()).hexdigest()[:16]


def is_converted(directory: Path) -> bool:
    """True if `directory` is a finished artifact (its stamp is written last)."""
    return (directory / STAMP).is_file()


def publish(out: Path, build: Callable[[Path], None], *, what: str, source: Path, version: int) -> Path:
    """Build into a temp directory beside `out` and rename it into place, under a file lock;
    `version`: that of the maker, recorded in the stamp with the source's identity."""
    if is_converted(out):
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(out) + ".lock"):
        if is_converted(out):
            return out
        if out.exists():  # an interrupted or foreign directory: rebuild it
            shutil.rmtree(out)
        for stale in out.parent.glob(f".{out.name}.*.tmp"):
            shutil.rmtree(stale, ignore_errors=True)
        tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp"))
        try:
            build(tmp)
            st = source.stat()
            stamp = {
                "source": str(source.resolve()),
                "size": st.st_size,
                "mtime_ns": st.st_mtime_ns,
                "converter_version": version,
            }
            (tmp / STAMP).write_text(json.dumps(stamp, indent=1))
            os.chmod(tmp, 0o755)
            os.replace(tmp, out)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    log.info("converted %s into %s", what, out)
    return out
