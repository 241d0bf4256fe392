"""ModelScope downloads (`--source modelscope`) for users who cannot reach Hugging Face.

Through the `modelscope` package (`pip install "qwenkit[modelscope]"`), which resumes partial
files and checks each file's sha256 against ModelScope's metadata itself. Files land in
`home()/modelscope/OWNER/REPO/` and are stamped like every other cached GGUF.
"""

from __future__ import annotations

import importlib
from pathlib import Path

from qwenkit.errors import FetchError, QwenkitError
from qwenkit.store import cache
from qwenkit.store.gguf_header import match_gguf, shard_names

_COMPLETE = ".qwenkit-complete"


def ms_dir() -> Path:
    return cache.home() / "modelscope"


def ensure(model_id: str, file: str | None, *, progress: bool) -> Path:
    """A GGUF (every shard) or, without `file`, a checkpoint snapshot of `model_id`."""
    try:  # imported by name: an optional dependency without type information
        hub_api = importlib.import_module("modelscope.hub.api").HubApi
        snapshot_download = importlib.import_module("modelscope.hub.snapshot_download").snapshot_download
    except ImportError:
        raise QwenkitError(
            'ModelScope downloads need the modelscope package: pip install "qwenkit[modelscope]"'
        ) from None
    repo_dir = ms_dir() / model_id
    try:
        with cache.locked(ms_dir() / ".locks" / f"{model_id.replace('/', '--')}.lock", f"modelscope:{model_id}"):
            if file is None:
                if not (repo_dir / _COMPLETE).exists():
                    snapshot_download(model_id, local_dir=str(repo_dir))
                    (repo_dir / _COMPLETE).touch()
                return repo_dir
            names = [f["Path"] for f in hub_api().get_model_files(model_id, recursive=True) if f.get("Type") != "tree"]
            found = match_gguf(names, file)
            if found is None:
                raise FetchError(f"modelscope:{model_id} has no {file}")
            shards = shard_names(found)
            snapshot_download(model_id, local_dir=str(repo_dir), allow_patterns=shards)
            with cache.progress_bars(progress) as bars:
                for name in shards:
                    path = repo_dir / name
                    if not path.is_file():
                        raise FetchError(f"modelscope:{model_id}: {name} did not arrive")
                    if cache.read_stamp(path) is None:
                        cache.write_stamp(path, cache.sha256_file(path, bars))
            return repo_dir / found
    except QwenkitError:
        raise
    except Exception as e:  # the modelscope package's and requests' errors become one line
        # a failed snapshot says only "1 of 1 file(s) failed"; the first file's error says why
        # (a sha256 mismatch, say), so that one is reported instead
        failed = getattr(e, "failed_files", None)
        failures = list(failed.values()) if isinstance(failed, dict) else []
        cause = failures[0] if failures else e
        lines = str(cause).strip().splitlines()
        more = f" (and {len(failures) - 1} more files)" if len(failures) > 1 else ""
        raise FetchError(
            f"cannot fetch modelscope:{model_id}: {lines[0][:200] if lines else type(cause).__name__}{more}"
        ) from None
