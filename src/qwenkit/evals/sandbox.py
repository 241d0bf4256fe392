"""Run untrusted generated Python in a separate, limited process: one per sample.

Each run gets a fresh launcher process (`jail.py`) that, where the kernel allows it (root, or
`unshare` permitted), isolates the program in new mount, network and PID namespaces:

- network: a namespace with no interface up, plus an audit hook that refuses socket creation;
- files: every mount read-only; the working directory is a fresh tmpfs of `disk_bytes`, gone
  when the run ends, and no file may exceed `file_bytes` (RLIMIT_FSIZE);
- processes: an unprivileged uid of its own per concurrent run with RLIMIT_NPROC, and the whole
  PID namespace is killed when the program ends or at the wall-time limit;
- memory: RLIMIT_AS; CPU: RLIMIT_CPU; environment: a few fixed variables, nothing inherited.

Without namespaces (`isolation() == "rlimits"`: not root, or unshare refused) the limits, the
process group kill, the audit hook and a removed temporary directory remain, but other paths are
protected only by file permissions and the network only by the audit hook, which ctypes can get
around. `isolation()` says which applies here.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from functools import cache
from pathlib import Path
from typing import Any, BinaryIO, Literal

from qwenkit.errors import QwenkitError

JAIL = Path(__file__).with_name("jail.py")
UID_BASE = 61000  # sandbox uids: UID_BASE .. UID_BASE + UID_POOL - 1, one per concurrent run
UID_POOL = 256
OUTPUT_TAIL = 4000  # characters of stdout/stderr kept in an Outcome

Isolation = Literal["namespaces", "rlimits"]
Status = Literal["passed", "failed", "timeout", "error"]


@dataclass(frozen=True)
class Limits:
    """What one sandboxed program may use."""

    wall_seconds: float = 10.0
    memory_bytes: int = 2 << 30
    file_bytes: int = 16 << 20
    disk_bytes: int = 64 << 20
    processes: int = 32
    cpu_seconds: int = 20


@dataclass(frozen=True)
class Outcome:
    """How a sandboxed program ended: `passed` is exit status 0 in time."""

    status: Status
    exit_code: int
    stdout: str
    stderr: str
    seconds: float

    @property
    def passed(self) -> bool:
        return self.status == "passed"


class _UidPool:
    """Distinct uids for concurrent runs, so one run's processes never count against another's RLIMIT_NPROC."""

    def __init__(self) -> None:
        self._free = list(range(UID_BASE, UID_BASE + UID_POOL))
        self._lock = threading.Lock()
        self._available = threading.Semaphore(UID_POOL)

    @contextmanager
    def take(self) -> Iterator[int]:
        with self._available:
            with self._lock:
                uid = self._free.pop()
            try:
                yield uid
            finally:
                with self._lock:
                    self._free.append(uid)


_uids = _UidPool()


def _environment(workdir: str) -> dict[str, str]:
    return {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "HOME": workdir,
        "TMPDIR": workdir,
        "LANG": "C.UTF-8",
        "PYTHONHASHSEED": "0",
        "PYTHONDONTWRITEBYTECODE": "1",
        "OMP_NUM_THREADS": "1",
    }


def run_python(code: str, limits: Limits = Limits(), *, isolation: Isolation | None = None) -> Outcome:
    """Run `code` as a Python program in a sandbox (see the module docstring) and say how it ended.

    `isolation` forces a mode (tests); by default the strongest this machine allows.
    """
    mode = isolation or _isolation_here()
    root = Path(tempfile.mkdtemp(prefix="qwenkit-sandbox-"))
    try:
        with _uids.take() as uid:
            return _run(code, limits, mode, root, uid if os.geteuid() == 0 else None)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _run(code: str, limits: Limits, mode: Isolation, root: Path, uid: int | None) -> Outcome:
    program, workdir = root / "program.py", root / "work"
    program.write_text(code, encoding="utf-8")
    workdir.mkdir()
    os.chmod(root, 0o755)
    program.chmod(0o644)
    if uid is not None:
        os.chown(workdir, uid, uid)
    settings = {
        "namespaces": mode == "namespaces",
        "uid": uid,
        "python": _interpreter(uid is not None),
        "program": str(program),
        "workdir": str(workdir),
        "env": _environment(str(workdir)),
        "wall_seconds": limits.wall_seconds,
        "memory_bytes": limits.memory_bytes,
        "file_bytes": limits.file_bytes,
        "disk_bytes": limits.disk_bytes,
        "processes": limits.processes,
        "cpu_seconds": limits.cpu_seconds,
    }
    started = time.perf_counter()
    # output goes to files the program cannot grow past RLIMIT_FSIZE, not to pipes held in memory
    with open(root / "stdout", "w+b") as out, open(root / "stderr", "w+b") as errs:
        launcher = subprocess.Popen(
            [sys.executable, "-I", str(JAIL), json.dumps(settings)],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=errs,
            env={},
            start_new_session=True,
        )
        try:
            code_ = launcher.wait(timeout=limits.wall_seconds + 10)
        except subprocess.TimeoutExpired:  # the launcher enforces the limit; this is the backstop
            os.killpg(launcher.pid, 9)
            code_ = launcher.wait()
        stdout, stderr = _tail(out), _tail(errs)
    seconds = time.perf_counter() - started
    if code_ == 0:
        status: Status = "passed"
    elif code_ == 124:
        status = "timeout"
    elif code_ == 125:
        status = "error"
    else:
        status = "failed"
    return Outcome(status, code_, stdout, stderr, seconds)


@cache
def _interpreter(unprivileged: bool) -> str:
    """The Python that runs programs: ours, or for an unprivileged uid the first one that uid can
    execute (ours may sit under a private home, e.g. pyenv's in /root)."""
    if not unprivileged:
        return sys.executable
    candidates = [os.path.realpath(sys.executable), shutil.which("python3"), "/usr/bin/python3"]
    for candidate in filter(None, candidates):
        path = Path(os.path.realpath(candidate))
        if path.is_file() and all(p.stat().st_mode & 0o001 for p in (path, *path.parents)):
            return str(path)
    raise QwenkitError("no Python interpreter that an unprivileged user may execute was found for the sandbox")


def _tail(f: BinaryIO) -> str:
    size = f.seek(0, os.SEEK_END)
    f.seek(max(0, size - 4 * OUTPUT_TAIL))
    return f.read().decode("utf-8", "replace")[-OUTPUT_TAIL:]


@cache
def _isolation_here() -> Isolation:
    """Namespaces when a probe run can set them up here, else resource limits only."""
    probe = run_python("print('ok')", Limits(wall_seconds=30), isolation="namespaces")
    return "namespaces" if probe.passed and probe.stdout.strip() == "ok" else "rlimits"


def isolation() -> Isolation:
    """The isolation sandboxed runs get on this machine."""
    return _isolation_here()


def describe(limits: Limits) -> dict[str, Any]:
    """The sandbox as recorded with results: isolation, interpreter and limits."""
    unprivileged = os.geteuid() == 0
    return {"isolation": isolation(), "python": _interpreter(unprivileged), **asdict(limits)}
