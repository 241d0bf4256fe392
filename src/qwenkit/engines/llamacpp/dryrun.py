"""llama.cpp's own memory figures for a GGUF, without allocating: a `no_alloc` load.

The model is opened with `llama_model_params.no_alloc` (metadata only, nothing read or mapped
beyond the header) and a context is created with the scheduler's exact parameters; llama.cpp
then sizes its model, KV, output and compute buffers as for a real load and logs them. The
breakdown API itself (`llama_get_memory_breakdown`) is C++-only, so the figures are read from
those log lines, routed through this package's log callback.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

import llama_cpp as C

from qwenkit.engines.llamacpp.model import _init_backend, log
from qwenkit.engines.llamacpp.scheduler import context_params
from qwenkit.errors import ModelLoadError

MIB = 1 << 20
_MODEL = re.compile(r"(\S+) model buffer size =\s*([\d.]+) MiB")
_KV = re.compile(r"llama_kv_cache: size =\s*([\d.]+) MiB")
_STATE = re.compile(r"llama_memory_recurrent: size =\s*([\d.]+) MiB")  # a hybrid's recurrent state
_OUTPUT = re.compile(r"(\S+)\s+output buffer size =\s*([\d.]+) MiB")
_COMPUTE = re.compile(r"(\S+) compute buffer size =\s*([\d.]+) MiB")


@dataclass
class Breakdown:
    """Bytes llama.cpp would allocate, per buffer (e.g. CPU_Mapped, CPU_REPACK, CUDA0)."""

    model: dict[str, int] = field(default_factory=dict)
    kv: int = 0
    state: int = 0
    output: dict[str, int] = field(default_factory=dict)
    compute: dict[str, int] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return sum(self.model.values()) + self.kv + self.state + sum(self.output.values()) + sum(self.compute.values())


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def dry_run(
    path: str | Path, *, n_ctx: int, n_parallel: int = 1, n_batch: int = 512, n_gpu_layers: int = 0
) -> Breakdown:
    """What loading `path` with these settings would allocate, as llama.cpp computes it."""
    _init_backend()
    collect = _Collect()
    level, propagate = log.level, log.propagate
    log.addHandler(collect)
    log.setLevel(logging.DEBUG)
    log.propagate = False  # llama.cpp's chatter goes to the collector only
    try:
        mparams = C.llama_model_default_params()
        mparams.no_alloc = True
        mparams.load_mode = C.LLAMA_LOAD_MODE_NONE  # as llama.cpp's own fit pass: a dry run maps nothing
        mparams.n_gpu_layers = n_gpu_layers
        model = C.llama_model_load_from_file(str(path).encode(), mparams)
        if not model:
            raise ModelLoadError(f"llama.cpp could not read {path} for a memory estimate")
        try:
            cparams = context_params(n_ctx=n_ctx, n_parallel=n_parallel, n_batch=n_batch, n_threads=1)
            ctx = C.llama_init_from_model(model, cparams)
            if not ctx:
                raise ModelLoadError(f"llama.cpp could not size a context of {n_ctx} x {n_parallel} for {path}")
            C.llama_free(ctx)
        finally:
            C.llama_model_free(model)
    finally:
        log.removeHandler(collect)
        log.setLevel(level)
        log.propagate = propagate
    return _parse(collect.lines)


def _parse(lines: list[str]) -> Breakdown:
    b = Breakdown()
    for line in lines:
        if m := _MODEL.search(line):
            b.model[m[1]] = b.model.get(m[1], 0) + _bytes(m[2])
        elif m := _KV.search(line):
            b.kv += _bytes(m[1])
        elif m := _STATE.search(line):
            b.state += _bytes(m[1])
        elif m := _OUTPUT.search(line):
            b.output[m[1]] = b.output.get(m[1], 0) + _bytes(m[2])
        elif m := _COMPUTE.search(line):
            b.compute[m[1]] = b.compute.get(m[1], 0) + _bytes(m[2])
    return b


def _bytes(mib: str) -> int:
    return round(float(mib) * MIB)
