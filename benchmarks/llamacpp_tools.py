"""llama.cpp's own tools (llama-bench, llama-server) built from the vendored source of the
llama-cpp-python sdist qwenkit runs on, so both sides of a comparison share one llama.cpp."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
from importlib.metadata import version
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / ".bench"


def _source() -> Path:
    ver = version("llama-cpp-python")
    src = WORK / f"llama_cpp_python-{ver}" / "vendor" / "llama.cpp"
    if src.is_dir():
        return src
    WORK.mkdir(exist_ok=True)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--quiet",
            "--no-deps",
            "--no-binary",
            ":all:",
            f"llama-cpp-python=={ver}",
            "-d",
            str(WORK),
        ],
        check=True,
    )
    with tarfile.open(WORK / f"llama_cpp_python-{ver}.tar.gz") as tar:
        tar.extractall(WORK, filter="data")
    return src


def tool(name: str) -> Path | None:
    """Path to a built llama.cpp tool (`llama-bench`, `llama-server`), building it if needed.

    Returns None, with the reason on stderr, when it cannot be built here.
    """
    if shutil.which("cmake") is None:
        print(f"skip {name}: cmake is not installed", file=sys.stderr)
        return None
    try:
        src = _source()
    except (subprocess.CalledProcessError, OSError, tarfile.TarError) as exc:
        print(f"skip {name}: cannot get the llama.cpp source ({exc})", file=sys.stderr)
        return None
    build = src.parent.parent / "build"
    binary = build / "bin" / name
    if binary.exists():
        return binary
    print(f"building {name} from {src} (several minutes, once)...", file=sys.stderr)
    jobs = str(os.cpu_count() or 2)
    try:
        subprocess.run(
            [
                "cmake",
                "-S",
                str(src),
                "-B",
                str(build),
                "-DCMAKE_BUILD_TYPE=Release",
                "-DLLAMA_CURL=OFF",
                "-DLLAMA_OPENSSL=OFF",
                "-DLLAMA_BUILD_TESTS=OFF",
                "-DLLAMA_BUILD_EXAMPLES=OFF",
            ],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        subprocess.run(
            ["cmake", "--build", str(build), "--target", name, "-j", jobs],
            check=True,
            stdout=subprocess.DEVNULL,
        )
    except (subprocess.CalledProcessError, OSError) as exc:
        print(f"skip {name}: build failed ({exc})", file=sys.stderr)
        return None
    return binary if binary.exists() else None
