"""Memory readings for measurements: this process's peak RSS, GPU memory, the machine's headroom."""

from __future__ import annotations

import contextlib
import resource
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

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


def memory_bandwidth(size_bytes: int = 256 * 2**20, rounds: int = 5) -> float:
    """Bytes per second this machine streams through memory: the best of `rounds` array copies.

    A copy reads and writes each byte once, so it moves 2 x `size_bytes`. One thread: a rough
    lower bound for what llama.cpp's decode loop, which reads every weight once per token, can use.
    """
    src = np.ones(size_bytes // 8, dtype=np.float64)
    dst = np.empty_like(src)
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        np.copyto(dst, src)
        best = min(best, time.perf_counter() - start)
    return 2 * src.nbytes / best
