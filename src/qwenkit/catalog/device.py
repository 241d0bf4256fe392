"""The machine a model would run on: device kind, available memory, and memory bandwidth.

Memory is what is *available* (MemAvailable, or free GPU memory), not the total. Bandwidth
decides decode speed: a GPU's or an Apple chip's is its published peak from the accelerator table
(`accelerators.toml`); a CPU's is assumed here (`CPU_GBS`), and measured by the CLI, which may
(`qwenkit.bench.memory.machine_bandwidth`, cached per machine), or given. `plan` describes a device
this machine does not have: a part from the table, or a kind with a memory size.
"""

from __future__ import annotations

import platform
import shutil
import subprocess
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

from qwenkit.catalog.accelerators import Accelerator, match
from qwenkit.errors import QwenkitError

DEFAULT_GPU_GBS = 400.0
CPU_GBS = 40.0  # a desktop's dual-channel DDR4-3200 peaks at 51 GB/s; laptops and servers differ
DEFAULT_APPLE_GBS = 100.0  # the base M2 and M3
Origin = Literal["measured", "given", "GPU table", "assumed"]


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
    bandwidth_origin: Origin = "assumed"
    planned: bool = False  # described by the user (`plan`), not detected on this machine

    def with_bandwidth(self, gbs: float, origin: Origin, how: str = "") -> Device:
        """This device with a bandwidth obtained otherwise (`how` adds to the origin in the text)."""
        label = "from the GPU table" if origin == "GPU table" else origin
        source = f"{gbs:.0f} GB/s, {label}{how}" if gbs >= 100 else f"{gbs:.1f} GB/s, {label}{how}"
        return replace(self, bandwidth_gbs=gbs, bandwidth_origin=origin, bandwidth_source=source)


def detect(kind: str | None = None) -> Device:
    """The device of `kind` ("cpu", "cuda", "mps"), or the best one present; an error if it is absent."""
    gpus = cuda_gpus() if kind in (None, "cuda") else []
    if gpus:
        best = max(gpus, key=lambda g: g.free)
        return _from_table(Device("cuda", best.free, best.total, 0, "", gpus, best.name), DEFAULT_GPU_GBS)
    if kind == "cuda":
        raise QwenkitError(
            "no CUDA GPU found (torch.cuda and nvidia-smi see none); use --device cpu, "
            "or plan for one with --memory SIZE (and --gpu NAME or --bandwidth GB/s)"
        )
    apple = platform.system() == "Darwin" and platform.machine() == "arm64"
    if kind == "mps" and not apple:
        raise QwenkitError(
            "this is not Apple silicon; plan for a Mac with --device mps --memory SIZE (or --gpu m3-pro)"
        )
    total, available = host_memory()
    if apple and kind in (None, "mps"):
        chip = _apple_chip() or "Apple silicon"
        return _from_table(Device("mps", available, total, 0, "", [], chip), DEFAULT_APPLE_GBS)
    cpu = Device("cpu", available, total, 0, "", [], platform.processor())
    return cpu.with_bandwidth(CPU_GBS, "assumed", " (dual-channel DDR4/DDR5; pass --bandwidth for yours)")


def plan(
    kind: str | None, memory: int | None, *, part: Accelerator | None = None, bandwidth: float | None = None
) -> Device:
    """A device this machine need not have: `part` from the accelerator table, or `kind` with
    `memory` bytes; its bandwidth `bandwidth` GB/s if given, else the table's, else assumed."""
    if part is not None:
        if kind not in (None, part.kind):
            raise QwenkitError(f"{part.name} is a {part.kind} device, not {kind}")
        kind = part.kind
        if memory is None:
            if len(part.memory_gib) > 1:
                sizes = " or ".join(f"{m:g}" for m in part.memory_gib)
                raise QwenkitError(f"{part.name} comes with {sizes} GiB: pass --memory")
            memory = int(part.memory_gib[0] * 2**30)
    if kind not in ("cuda", "mps") or memory is None:
        raise QwenkitError("a plan needs --device cuda or mps and --memory SIZE (or --gpu NAME)")
    device = Device(kind, memory, memory, 0, "", [], part.name if part is not None else "", planned=True)
    if bandwidth is not None:
        return device.with_bandwidth(bandwidth, "given")
    if part is not None:
        return device.with_bandwidth(part.bandwidth_gbs, "GPU table", f" ({part.name})")
    default = DEFAULT_GPU_GBS if kind == "cuda" else DEFAULT_APPLE_GBS
    return device.with_bandwidth(default, "assumed", " (pass --gpu NAME or --bandwidth for the real figure)")


def _from_table(device: Device, default: float) -> Device:
    part = match(device.kind, device.name, device.total)
    if part is None:
        return device.with_bandwidth(default, "assumed", f" ({device.name} is not in the GPU table)")
    return device.with_bandwidth(part.bandwidth_gbs, "GPU table", f" ({part.name}, published peak)")


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


def _apple_chip() -> str:
    try:
        return subprocess.run(
            ["sysctl", "-n", "machdep.cpu.brand_string"], capture_output=True, text=True, timeout=5
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""
