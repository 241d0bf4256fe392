"""llama.cpp's own `llama-bench`, run on a GGUF for a side-by-side reference."""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass
from pathlib import Path

from qwenkit.engines.llamacpp.vendor import tool
from qwenkit.errors import QwenkitError


@dataclass(frozen=True)
class LlamaBenchRound:
    prefill_tps: float  # llama-bench ppN: N prompt tokens in one batch
    decode_tps: float  # llama-bench tgN: N tokens one by one


def llama_bench_binary() -> Path:
    """The shared `llama-bench` build (built from the vendored llama.cpp source on first use)."""
    binary = tool("llama-bench")
    if binary is None:
        raise QwenkitError("llama-bench is not available here (cmake and a C++ compiler build it; see stderr)")
    return binary


def run_llama_bench(
    binary: Path, model: Path, *, prompt_tokens: int, gen_tokens: int, threads: int, repetitions: int = 1
) -> LlamaBenchRound:
    """One llama-bench run: a ppN and a tgN test on `model` with `threads` threads."""
    cmd = [str(binary), "-m", str(model), "-t", str(threads), "-p", str(prompt_tokens), "-n", str(gen_tokens)]
    cmd += ["-r", str(repetitions), "-o", "json"]
    try:
        done = subprocess.run(cmd, check=True, capture_output=True, text=True)
        tests = json.loads(done.stdout)
    except subprocess.CalledProcessError as exc:
        last = (exc.stderr or "").strip().splitlines()[-1:] or ["no output"]
        raise QwenkitError(f"llama-bench failed ({exc.returncode}): {last[0]}") from None
    except json.JSONDecodeError:
        raise QwenkitError("llama-bench printed no JSON") from None
    speeds = {(t["n_prompt"], t["n_gen"]): float(t["avg_ts"]) for t in tests}
    return LlamaBenchRound(prefill_tps=speeds[(prompt_tokens, 0)], decode_tps=speeds[(0, gen_tokens)])
