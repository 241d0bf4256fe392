"""Memory readings for measurements: this process's peak RSS, GPU memory, the machine's headroom
and memory bandwidth (`machine_bandwidth`: measured once per machine, for `qwenkit recommend`)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import resource
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from qwenkit.store.cache import home

_STATUS = Path("/proc/self/status")


def reset_peak_rss() -> bool:
    """Start a new peak-RSS window (Linux: writing 5 to /proc/self/clear_refs); False where unsupported."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def peak_rss_bytes() -> int:
    """The highest resident set size since the last `reset_peak_rss` (or since the process started)."""
    with contextlib.suppress(OSError):
        for line in _STATUS.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, KiB on Linux
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


def meminfo() -> dict[str, int]:
    """/proc/meminfo in bytes ({} where there is none)."""
    out: dict[str, int] = {}
    with contextlib.suppress(OSError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            key, _, rest = line.partition(":")
            fields = rest.split()
            if fields and fields[0].isdigit():
                out[key] = int(fields[0]) * (1024 if fields[1:] == ["kB"] else 1)
    return out


def torch_cuda() -> Any:
    """The torch module when it is already imported and sees a GPU, else None (never imports torch)."""
    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_available():
        return None
    return torch


def reset_peak_gpu() -> None:
    torch = torch_cuda()
    if torch is not None:
        torch.cuda.reset_peak_memory_stats()


def peak_gpu_bytes() -> int | None:
    """Peak GPU memory torch allocated since the last reset (None without torch and a GPU)."""
    torch = torch_cuda()
    return None if torch is None else int(torch.cuda.max_memory_allocated())


def memory_bandwidth(size_bytes: int = 256 * 2**20, rounds: int = 5, threads: int = 1) -> float:
    """Bytes per second this machine streams through memory: the best of `rounds` array copies.

    A copy reads and writes each byte once, so it moves 2 x `size_bytes`. One thread (what
    `qwenkit health` uses) is a rough lower bound for what llama.cpp's decode loop, which reads
    every weight once per token, can use; `threads` copy a slice each (numpy releases the GIL),
    closer to what a decode on every core reaches.
    """
    src = np.ones(size_bytes // 8, dtype=np.float64)
    dst = np.empty_like(src)
    slices = [slice(s[0], s[-1] + 1) for s in np.array_split(np.arange(src.size), max(1, threads)) if s.size]
    best = float("inf")
    with ThreadPoolExecutor(len(slices)) as pool:
        for _ in range(rounds):
            start = time.perf_counter()
            list(pool.map(lambda part: np.copyto(dst[part], src[part]), slices))
            best = min(best, time.perf_counter() - start)
    return 2 * src.nbytes / best


@dataclass(frozen=True)
class Bandwidth:
    bytes_per_s: float
    threads: int
    measured_at: float  # unix time
    cached: bool


def machine_bandwidth(*, refresh: bool = False) -> Bandwidth:
    """This machine's memory bandwidth on every core, measured once (about half a second) and
    kept under `$QWENKIT_HOME/machine/`, one file per machine (hostname, CPU, memory, cores)."""
    threads = os.cpu_count() or 1
    identity = f"{platform.node()}|{platform.machine()}|{platform.processor()}|{meminfo().get('MemTotal', 0)}|{threads}"
    path = home() / "machine" / f"bandwidth-{hashlib.sha256(identity.encode()).hexdigest()[:16]}.json"
    if not refresh:
        with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
            data = json.loads(path.read_text(encoding="utf-8"))
            return Bandwidth(float(data["bytes_per_s"]), int(data["threads"]), float(data["measured_at"]), True)
    reading = Bandwidth(memory_bandwidth(threads=threads), threads, time.time(), False)
    with contextlib.suppress(OSError):
        path.parent.mkdir(parents=True, exist_ok=True)
        record = {"bytes_per_s": reading.bytes_per_s, "threads": threads, "measured_at": reading.measured_at}
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps({**record, "machine": identity}), encoding="utf-8")
        tmp.replace(path)
    return reading
