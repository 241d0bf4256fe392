"""Hugging Face references (`hf:OWNER/REPO[/FILE]`): GGUF files or checkpoint directories.

Downloads go to `home()/hf/OWNER/REPO/` (huggingface_hub's `local_dir` layout). A GGUF is
checked against the Hub's LFS sha256 once, then stamped like embedded models. Before any network
call the Hub endpoint is probed once with a short timeout (QWENKIT_HF_TIMEOUT seconds, default
5), so being offline fails fast instead of waiting through huggingface_hub's retries.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, cast

from rich.progress import Progress

from qwenkit.errors import FetchError, ModelNotFound, QwenkitError
from qwenkit.store import cache
from qwenkit.store.gguf_header import is_first_shard, match_gguf, shard_names
from qwenkit.store.refs import Ref

TIMEOUT_ENV = "QWENKIT_HF_TIMEOUT"
PREFERRED_QUANTS = ("q4_k_m", "q4_k_s", "q5_k_m", "q4_0", "q8_0")
_CHECKPOINT_PATTERNS = ["*.json", "*.txt", "*.model", "*.jinja", "*.tiktoken"]
_COMPLETE = ".qwenkit-complete"  # marks a finished checkpoint snapshot


def ensure(ref: Ref, *, full: bool, progress: bool) -> tuple[str, Path, str]:
    """Return (name, path, format) for an hf: reference, downloading what is missing or corrupt.

    `full` re-hashes cached GGUFs and re-syncs cached checkpoints with the Hub.
    """
    repo_dir = cache.hf_dir() / ref.name
    try:
        with cache.locked(cache.hf_dir() / ".locks" / f"{ref.name.replace('/', '--')}.lock", ref.text):
            local = _local_ggufs(repo_dir)
            file = (match_gguf(local, ref.file) or ref.file) if ref.file else pick_gguf(local)
            if file is not None and _cached_ok(repo_dir, file, full=full, progress=progress):
                return f"hf:{ref.name}/{file}", repo_dir / file, "gguf"
            if ref.file is None and file is None and not full and (repo_dir / _COMPLETE).exists():
                return f"hf:{ref.name}", repo_dir, "hf"
            _check_online(ref.text)
            return _download(ref, repo_dir, progress=progress)
    except QwenkitError:
        raise
    except Exception as e:  # huggingface_hub, httpx and OS errors alike become one line
        raise _translate(ref.text, e) from None


def cached() -> Iterator[tuple[str, Path, str]]:
    """(name, path, format) of every GGUF and finished checkpoint under `home()/hf`."""
    for repo_dir in sorted(cache.hf_dir().glob("*/*")):
        if repo_dir.parent.name.startswith(".") or not repo_dir.is_dir():
            continue
        repo = f"{repo_dir.parent.name}/{repo_dir.name}"
        for file in _local_ggufs(repo_dir):
            if is_first_shard(file):
                yield f"hf:{repo}/{file}", repo_dir / file, "gguf"
        if (repo_dir / _COMPLETE).exists():
            yield f"hf:{repo}", repo_dir, "hf"


def cached_path(repo: str, file: str | None) -> Path | None:
    """The cached GGUF (first shard) for `file` in `repo`, or the finished checkpoint directory."""
    repo_dir = cache.hf_dir() / repo
    if not repo_dir.is_dir():
        return None
    if file is None:
        return repo_dir if (repo_dir / _COMPLETE).exists() else None
    found = match_gguf(_local_ggufs(repo_dir), file)
    if found is None or not all((repo_dir / n).is_file() for n in shard_names(found)):
        return None
    return repo_dir / found


def remove(repo: str, file: str | None) -> list[Path]:
    """Delete a cached GGUF (every shard, with stamps) or, without `file`, the whole repo directory."""
    import shutil

    repo_dir = cache.hf_dir() / repo
    with cache.locked(cache.hf_dir() / ".locks" / f"{repo.replace('/', '--')}.lock", f"hf:{repo}"):
        if file is None:
            if not repo_dir.is_dir():
                return []
            shutil.rmtree(repo_dir)
            return [repo_dir]
        found = match_gguf(_local_ggufs(repo_dir), file) if repo_dir.is_dir() else None
        if found is None:
            return []
        removed = [repo_dir / n for n in shard_names(found) if (repo_dir / n).exists()]
        for path in removed:
            cache.remove(path)
        return removed


def pick_gguf(files: list[str]) -> str | None:
    """The GGUF to use from a repo listing: q4_k_m first, then other common quants, then by name."""
    candidates = [f for f in files if f.lower().endswith(".gguf") and is_first_shard(f) and "mmproj" not in f.lower()]

    def rank(f: str) -> tuple[int, str]:
        low = f.lower()
        return next((i for i, q in enumerate(PREFERRED_QUANTS) if q in low), len(PREFERRED_QUANTS)), f

    return min(candidates, key=rank, default=None)


def _local_ggufs(repo_dir: Path) -> list[str]:
    return sorted(
        p.relative_to(repo_dir).as_posix()
        for p in repo_dir.rglob("*.gguf")
        if ".cache" not in p.relative_to(repo_dir).parts
    )


def _cached_ok(repo_dir: Path, file: str, *, full: bool, progress: bool) -> bool:
    """True if every shard of `file` is present and matches its stamp; bad shards are deleted."""
    ok = True
    for name in shard_names(file):
        path, stamp = repo_dir / name, cache.read_stamp(repo_dir / name)
        if stamp is None or not path.is_file():
            ok = False
            continue
        with cache.progress_bars(progress) as bars:
            if not cache.verify(path, stamp.get("sha256", ""), stamp.get("size"), full=full, bars=bars):
                cache.log.warning("cached %s is corrupt; downloading it again", path)
                cache.remove(path)
                ok = False
    return ok


def _check_online(text: str) -> None:
    """Fail fast with FetchError when the Hub cannot be reached (or offline mode is on)."""
    from huggingface_hub import constants, get_session

    if constants.is_offline_mode():
        raise FetchError(f"cannot fetch {text}: it is not in the cache and HF_HUB_OFFLINE is set")
    timeout = float(os.environ.get(TIMEOUT_ENV) or 5)
    try:
        get_session().head(constants.ENDPOINT, timeout=timeout)
    except Exception as e:
        raise FetchError(f"cannot fetch {text}: {constants.ENDPOINT} is unreachable ({_first_line(e)})") from None


def _download(ref: Ref, repo_dir: Path, *, progress: bool) -> tuple[str, Path, str]:
    from huggingface_hub import HfApi, hf_hub_download, snapshot_download
    from huggingface_hub.hf_api import RepoFile

    api = HfApi()
    file = ref.file
    if file is None:
        listing = api.list_repo_files(ref.name)
        file = pick_gguf(listing)
        if file is None:
            if "config.json" not in listing:
                raise ModelNotFound(f"{ref.text}: the repo has no .gguf file and no config.json")
            weights = "*.safetensors" if any(f.endswith(".safetensors") for f in listing) else "*.bin"
            with _hub_bars(progress):
                snapshot_download(ref.name, local_dir=repo_dir, allow_patterns=[*_CHECKPOINT_PATTERNS, weights])
            (repo_dir / _COMPLETE).touch()
            return f"hf:{ref.name}", repo_dir, "hf"
    names = shard_names(file)
    infos = {i.path: i for i in api.get_paths_info(ref.name, names) if isinstance(i, RepoFile)}
    if any(name not in infos for name in names):  # named as one file but split on the Hub, or the reverse
        found = match_gguf(api.list_repo_files(ref.name), file)
        if found is None:
            raise ModelNotFound(f"{ref.text}: no file {file} in the repo")
        file, names = found, shard_names(found)
        infos = {i.path: i for i in api.get_paths_info(ref.name, names) if isinstance(i, RepoFile)}
    for name in names:
        if name not in infos:
            raise ModelNotFound(f"{ref.text}: no file {name} in the repo")
        with cache.progress_bars(progress) as bars:
            bar = cast(Any, rich_bar(bars, f"download {name}"))  # huggingface_hub takes any tqdm-like class
            path = Path(hf_hub_download(ref.name, name, local_dir=repo_dir, tqdm_class=bar))
            lfs = infos[name].lfs
            actual = cache.sha256_file(path, bars)
        if lfs is not None and actual != lfs.sha256:
            cache.remove(path)
            raise FetchError(f"cannot fetch {ref.text}: {name} does not match the Hub's sha256 (removed it)")
        cache.write_stamp(path, actual)
    return f"hf:{ref.name}/{file}", repo_dir / file, "gguf"


def rich_bar(bars: Progress, label: str) -> type:
    """A tqdm-like class drawing `label` on rich `bars` (huggingface_hub opens one per download)."""

    class RichBar:
        def __init__(self, *, total: int | None = None, initial: int = 0, **_: object) -> None:
            self.task = bars.add_task(label, total=total, completed=initial)

        def update(self, n: float | None = 1) -> None:  # negative when a retry restarts from zero
            bars.advance(self.task, n or 0)

        def close(self) -> None:
            pass

        def __enter__(self) -> RichBar:
            return self

        def __exit__(self, *exc: object) -> None:
            self.close()

    return RichBar


@contextmanager
def _hub_bars(enabled: bool) -> Iterator[None]:
    """Silence huggingface_hub's own progress bars unless `enabled`."""
    from huggingface_hub.utils import (
        are_progress_bars_disabled,
        disable_progress_bars,
        enable_progress_bars,
    )

    if enabled or are_progress_bars_disabled():
        yield
        return
    disable_progress_bars()
    try:
        yield
    finally:
        enable_progress_bars()


def _translate(text: str, e: Exception) -> QwenkitError:
    from huggingface_hub.errors import (
        EntryNotFoundError,
        HFValidationError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
    )

    if isinstance(e, LocalEntryNotFoundError):
        return FetchError(f"cannot fetch {text}: not cached and the Hub is unreachable")
    if isinstance(e, RepositoryNotFoundError):
        return ModelNotFound(f"{text}: no such Hugging Face repo (or it is private or gated)")
    if isinstance(e, EntryNotFoundError):
        return ModelNotFound(f"{text}: file not found in the repo")
    if isinstance(e, HFValidationError):
        return ModelNotFound(f"bad reference {text!r}: {_first_line(e)}")
    return FetchError(f"cannot fetch {text}: {_first_line(e)}")


def _first_line(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    return lines[0][:200] if lines else type(e).__name__
