"""The machine a model would run on: device kind, available memory, and memory bandwidth.

Memory is what is *available* (MemAvailable, or free GPU memory), not the total. Bandwidth
decides decode speed: a GPU's is looked up from its name (`GPU_BANDWIDTH_GBS`), an Apple chip's
likewise; a CPU's is assumed (`CPU_GBS`; a quick single-threaded copy under-reads it several-fold,
so it is not measured) and can be given.
"""

from __future__ import annotations

import platform
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from qwenkit.errors import QwenkitError

# Published peak bandwidths (GB/s) by a substring of the device name, most specific first.
GPU_BANDWIDTH_GBS: dict[str, float] = {
    "H200": 4800,
    "H100": 3350,
    "A100": 1935,
    "L40": 864,
    "A10": 600,
    "L4": 300,
    "T4": 320,
    "V100": 900,
    "5090": 1792,
    "4090": 1008,
    "4080": 717,
    "4070": 504,
    "4060": 272,
    "3090": 936,
    "3080": 760,
    "3070": 448,
    "3060": 360,
}
DEFAULT_GPU_GBS = 400.0
CPU_GBS = 40.0  # a desktop's dual-channel DDR4-3200 peaks at 51 GB/s; laptops and servers differ
APPLE_GBS = {"Ultra": 800.0, "Max": 400.0, "Pro": 200.0}
DEFAULT_APPLE_GBS = 100.0


@dataclass(frozen=True)
class GPU:
    name: str
    total: int  # bytes
    free: int  # bytes


@dataclass(frozen=True)
class Device:
    """Where a model runs, with the memory it may use and how fast that memory reads."""

    kind: str  # "cpu", "cuda" or "mps"
    available: int  # bytes a model may use (the largest GPU's free memory on CUDA)
    total: int
    bandwidth_gbs: float
    bandwidth_source: str  # how the bandwidth was obtained, shown with speed estimates
    gpus: list[GPU] = field(default_factory=list)
    name: str = ""


def detect(kind: str | None = None) -> Device:
    """The device of `kind` ("cpu", "cuda", "mps"), or the best one present."""
    gpus = cuda_gpus() if kind in (None, "cuda") else []
    if gpus:
        best = max(gpus, key=lambda g: g.free)
        gbs = gpu_bandwidth(best.name)
        source = f"{best.name}: {'published peak' if gbs != DEFAULT_GPU_GBS else 'assumed'} {gbs:.0f} GB/s"
        return Device("cuda", best.free, best.total, gbs, source, gpus, best.name)
    if kind == "cuda":
        raise QwenkitError("no CUDA GPU found (torch.cuda and nvidia-smi see none); use --device cpu")
    total, available = host_memory()
    if kind == "mps" or (kind is None and platform.system() == "Darwin" and platform.machine() == "arm64"):
        chip = _apple_chip()
        gbs = next((v for k, v in APPLE_GBS.items() if k in chip), DEFAULT_APPLE_GBS)
        return Device("mps", available, total, gbs, f"{chip or 'Apple silicon'}: published {gbs:.0f} GB/s", [], chip)
    source = f"assumed {CPU_GBS:.0f} GB/s (dual-channel DDR4/DDR5; pass --bandwidth for yours)"
    return Device("cpu", available, total, CPU_GBS, source, [], platform.processor())


def host_memory() -> tuple[int, int]:
    """(total, available) bytes of host memory: /proc/meminfo, else psutil where installed."""
    info: dict[str, int] = {}
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            key, _, value = line.partition(":")
            info[key] = int(value.split()[0]) * 1024
        return info["MemTotal"], info.get("MemAvailable", info.get("MemFree", 0))
    except (OSError, ValueError, IndexError, KeyError):
        pass
    try:
        import psutil  # type: ignore[import-untyped]  # optional, for macOS and Windows
    except ImportError:
        return 0, 0
    vm = psutil.virtual_memory()
    return int(vm.total), int(vm.available)


def cuda_gpus() -> list[GPU]:
    """Every CUDA GPU with its total and free memory: torch if it sees CUDA, else nvidia-smi."""
    try:
        import torch

        if torch.cuda.is_available():
            out = []
            for i in range(torch.cuda.device_count()):
                free, total = torch.cuda.mem_get_info(i)
                out.append(GPU(torch.cuda.get_device_name(i), int(total), int(free)))
            return out
    except ImportError:
        pass
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return []
    try:
        text = subprocess.run(
            [smi, "--query-gpu=name,memory.total,memory.free", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return parse_nvidia_smi(text)


def parse_nvidia_smi(text: str) -> list[GPU]:
    """GPUs from `nvidia-smi --query-gpu=name,memory.total,memory.free --format=csv,noheader,nounits`."""
    gpus = []
    for line in text.strip().splitlines():
        parts = [p.strip() for p in line.rsplit(",", 2)]
        if len(parts) == 3 and parts[1].isdigit() and parts[2].isdigit():
            gpus.append(GPU(parts[0], int(parts[1]) << 20, int(parts[2]) << 20))
    return gpus


def gpu_bandwidth(name: str) -> float:
    return next((v for k, v in GPU_BANDWIDTH_GBS.items() if k in name), DEFAULT_GPU_GBS)


def _apple_chip() -> str:
    try:
        return subprocess.run(
            ["sysctl", "-n", "machdep.cpu.brand_string"], capture_output=True, text=True, timeout=5
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""
