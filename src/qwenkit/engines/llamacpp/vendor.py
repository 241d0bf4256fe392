"""llama.cpp's own source and tools, from the very llama-cpp-python sdist qwenkit runs on.

One copy for everything that needs llama.cpp beyond the Python binding: `llama-bench` and
`llama-server` for side-by-side measurements, the quantizer, and the conversion scripts
(`convert_hf_to_gguf.py`, `convert_lora_to_gguf.py`). The sdist is fetched from PyPI once and
tools are built once, under `$QWENKIT_HOME/llama.cpp/`.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
from importlib.metadata import version
from pathlib import Path

from filelock import FileLock

from qwenkit.store.cache import home


def work_dir() -> Path:
    """Where the sdist is unpacked and the tools are built."""
    return home() / "llama.cpp"


def source() -> Path:
    """The vendored llama.cpp source tree of the installed llama-cpp-python (fetched once).

    Raises CalledProcessError, OSError or TarError when the sdist cannot be had.
    """
    ver = version("llama-cpp-python")
    work = work_dir()
    src = work / f"llama_cpp_python-{ver}" / "vendor" / "llama.cpp"
    if src.is_dir():
        return src
    work.mkdir(parents=True, exist_ok=True)
    pip = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", ":all:"]
    subprocess.run([*pip, f"llama-cpp-python=={ver}", "-d", str(work)], check=True)
    with tarfile.open(work / f"llama_cpp_python-{ver}.tar.gz") as tar:
        tar.extractall(work, filter="data")
    return src


def tool(name: str) -> Path | None:
    """Path to a built llama.cpp tool (`llama-bench`, `llama-server`, `llama-quantize`), building it if needed.

    Returns None, with the reason on stderr, when it cannot be built here. Concurrent callers (two
    benchmark processes, say) wait on one lock and build once.
    """
    if shutil.which("cmake") is None:
        print(f"skip {name}: cmake is not installed", file=sys.stderr)
        return None
    try:
        src = source()
    except (subprocess.CalledProcessError, OSError, tarfile.TarError) as exc:
        print(f"skip {name}: cannot get the llama.cpp source ({exc})", file=sys.stderr)
        return None
    build = src.parent.parent / "build"
    binary = build / "bin" / name
    with FileLock(work_dir() / "build.lock"):
        return binary if binary.exists() else _build(src, build, name)


def _build(src: Path, build: Path, name: str) -> Path | None:
    binary = build / "bin" / name
    print(f"building {name} from {src} (several minutes, once)...", file=sys.stderr)
    configure = [
        *("cmake", "-S", str(src), "-B", str(build), "-DCMAKE_BUILD_TYPE=Release"),
        *("-DLLAMA_CURL=OFF", "-DLLAMA_OPENSSL=OFF", "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_EXAMPLES=OFF"),
    ]
    try:
        subprocess.run(configure, check=True, stdout=subprocess.DEVNULL)
        jobs = str(os.cpu_count() or 2)
        subprocess.run(
            ["cmake", "--build", str(build), "--target", name, "-j", jobs], check=True, stdout=subprocess.DEVNULL
        )
    except (subprocess.CalledProcessError, OSError) as exc:
        print(f"skip {name}: build failed ({exc})", file=sys.stderr)
        return None
    return binary if binary.exists() else None
