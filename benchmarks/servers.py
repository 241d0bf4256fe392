"""Start and stop the servers the benchmarks compare, on 127.0.0.1 only."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def running(cmd: list[str], port: int, log: Path, *, ready_timeout_s: float = 180) -> Iterator[tuple[str, int]]:
    """Run a server command until the block ends; yields (base URL, pid) once /health answers 200."""
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
        base = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + ready_timeout_s
            while True:
                if proc.poll() is not None:
                    raise RuntimeError(f"{cmd[0]} exited with {proc.returncode}; see {log}")
                with contextlib.suppress(httpx.HTTPError):
                    if httpx.get(f"{base}/health", timeout=2).status_code == 200:
                        break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{cmd[0]} not ready after {ready_timeout_s:.0f}s; see {log}")
                time.sleep(0.5)
            yield base, proc.pid
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def qwenkit_cmd(model: str, port: int, *, parallel: int, threads: int, ctx: int) -> list[str]:
    qwenkit = str(Path(sys.executable).with_name("qwenkit"))
    return [
        qwenkit,
        "serve",
        "--model",
        model,
        "--port",
        str(port),
        "--parallel",
        str(parallel),
        "--threads",
        str(threads),
        "--ctx",
        str(ctx),
    ]


def llama_server_cmd(binary: Path, model: Path, port: int, *, parallel: int, threads: int, ctx: int) -> list[str]:
    return [
        str(binary),
        "-m",
        str(model),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "-np",
        str(parallel),
        "-t",
        str(threads),
        "-c",
        str(ctx * parallel),
        "--jinja",
        "--no-webui",
    ]
