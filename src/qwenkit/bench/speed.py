"""`qwenkit bench`: how fast a model loads, reads a prompt and writes tokens on this machine.

Each repeat loads the model afresh and measures, in order: load time; one stream's time to
first token (prompt of `prompt_tokens`), prefill tokens/s and decode tokens/s; then, for each
parallel level, that many requests submitted at once and their aggregate generated tokens/s
(first submit to last token, prefill included, as a server sees a wave of requests); and the
process's peak RSS (and GPU memory where torch sees one). Prompts are random ordinary tokens,
distinct per request, so no prefix cache helps; end-of-turn tokens are suppressed so every
request writes exactly `gen_tokens`. With `vs_llama_bench`, llama.cpp's `llama-bench` runs
ppN/tgN on the same file and threads between qwenkit's repeats, in alternating order. With
`speculative`, each repeat also decodes a code-edit request (`bench/edits.py`: a standard-library
module to copy with one name changed) greedily with speculative decoding off and on.
"""

from __future__ import annotations

import os
import platform
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from qwenkit.api import load, pick_engine
from qwenkit.bench.edits import edit_cases
from qwenkit.bench.llama_bench import LlamaBenchRound, llama_bench_binary, run_llama_bench
from qwenkit.bench.memory import meminfo, peak_gpu_bytes, peak_rss_bytes, reset_peak_gpu, reset_peak_rss
from qwenkit.bench.stats import Spread
from qwenkit.catalog.fetch import resolve
from qwenkit.engines.base import Chunk, Engine, SamplingParams
from qwenkit.engines.llamacpp.model import default_threads
from qwenkit.errors import QwenkitError

# Ordinary BPE tokens of the Qwen vocabulary (well below the special tokens at 151643+).
_TOKEN_RANGE = (1000, 30000)
_REQUEST_TIMEOUT_S = 3600.0


@dataclass(frozen=True)
class BenchConfig:
    model: str = "default"
    engine: str = "auto"
    prompt_tokens: int = 512
    gen_tokens: int = 128
    parallel: tuple[int, ...] = (1, 4, 8)
    repeat: int = 5
    threads: int | None = None
    dtype: str = "auto"
    vs_llama_bench: bool = False
    speculative: bool = False  # also decode a code-edit request with speculation off and on

    def __post_init__(self) -> None:
        if self.prompt_tokens < 1 or self.gen_tokens < 2:
            raise QwenkitError("--prompt-tokens must be at least 1 and --gen-tokens at least 2")
        if not self.parallel or min(self.parallel) < 1:
            raise QwenkitError("--parallel needs one or more levels of at least 1, e.g. 1,4,8")
        if self.repeat < 1:
            raise QwenkitError("--repeat must be at least 1")

    def steps(self) -> int:
        """Phases of a whole run, each announced by one `step` call: per repeat, load, single stream,
        each parallel level (and llama-bench)."""
        return self.repeat * (2 + len(self.parallel) + int(self.vs_llama_bench) + int(self.speculative))


@dataclass
class _Round:
    load_s: float
    ttft_s: float
    prefill_tps: float
    decode_tps: float
    aggregate_tps: dict[int, float]
    peak_rss_bytes: int
    peak_gpu_bytes: int | None
    edit_decode_tps: dict[bool, float] = field(default_factory=dict)  # speculation off/on: tokens/s
    edit_accepted: float = 0.0  # speculation on: share of drafted tokens accepted


@dataclass
class BenchResult:
    config: BenchConfig
    model_name: str
    model_path: Path
    model_bytes: int
    model_format: str
    quant: str | None
    engine: str
    threads: int
    rounds: list[_Round] = field(default_factory=list)
    llama_bench: list[LlamaBenchRound] = field(default_factory=list)
    machine: dict[str, Any] = field(default_factory=dict)

    def spread(self, name: str) -> Spread:
        return Spread.of([getattr(r, name) for r in self.rounds])

    def aggregate(self, level: int) -> Spread:
        return Spread.of([r.aggregate_tps[level] for r in self.rounds])

    def llama_bench_spread(self, name: str) -> Spread:
        return Spread.of([getattr(r, name) for r in self.llama_bench])

    def ratios(self) -> dict[str, float]:
        """qwenkit's median over llama-bench's median, for prefill and decode."""
        if not self.llama_bench:
            return {}
        return {
            "prefill": round(self.spread("prefill_tps").median / self.llama_bench_spread("prefill_tps").median, 4),
            "decode": round(self.spread("decode_tps").median / self.llama_bench_spread("decode_tps").median, 4),
        }

    def to_dict(self) -> dict[str, Any]:
        c = self.config
        gpu = [r.peak_gpu_bytes for r in self.rounds if r.peak_gpu_bytes is not None]
        out: dict[str, Any] = {
            "model": self.model_name,
            "model_file": str(self.model_path),
            "model_bytes": self.model_bytes,
            "model_format": self.model_format,
            "quantization": self.quant,
            "engine": self.engine,
            "threads": self.threads,
            "prompt_tokens": c.prompt_tokens,
            "gen_tokens": c.gen_tokens,
            "parallel_levels": list(c.parallel),
            "repeats": c.repeat,
            "load_s": self.spread("load_s").to_dict(),
            "ttft_s": self.spread("ttft_s").to_dict(),
            "prefill_tokens_per_s": self.spread("prefill_tps").to_dict(2),
            "decode_tokens_per_s": self.spread("decode_tps").to_dict(2),
            "aggregate_tokens_per_s_by_parallel": {str(n): self.aggregate(n).to_dict(2) for n in c.parallel},
            "peak_rss_bytes": self.spread("peak_rss_bytes").to_dict(0),
            "peak_gpu_bytes": Spread.of(gpu).to_dict(0) if gpu else None,
            "machine": self.machine,
        }
        if self.llama_bench:
            out["llama_bench"] = {
                "prefill_tokens_per_s": self.llama_bench_spread("prefill_tps").to_dict(2),
                "decode_tokens_per_s": self.llama_bench_spread("decode_tps").to_dict(2),
            }
            out["qwenkit_over_llama_bench"] = self.ratios()
        if c.speculative:
            off = Spread.of([r.edit_decode_tps[False] for r in self.rounds])
            on = Spread.of([r.edit_decode_tps[True] for r in self.rounds])
            out["speculative"] = {
                "case": edit_cases(1)[0].to_dict(),
                "decode_tokens_per_s_off": off.to_dict(2),
                "decode_tokens_per_s_on": on.to_dict(2),
                "speedup": round(on.median / off.median, 3),
                "accepted_share": Spread.of([r.edit_accepted for r in self.rounds]).to_dict(3),
            }
        return out


def random_prompt(n: int, seed: tuple[int, ...]) -> list[int]:
    """`n` ordinary token ids, different for each seed (so no two requests share a cached prefix)."""
    return [int(t) for t in np.random.default_rng(seed).integers(*_TOKEN_RANGE, size=n)]


@dataclass
class _Timing:
    submitted: float
    stamps: list[float] = field(default_factory=list)  # one per generated token
    error: str | None = None


def timed_requests(
    engine: Engine,
    prompts: Sequence[list[int]],
    params: SamplingParams,
    on_last: Callable[[Chunk], None] = lambda _: None,
) -> tuple[list[_Timing], float]:
    """Submit every prompt at once; per-request token timestamps, and the time the last one finished
    (`on_last` gets each request's last chunk)."""
    timings: list[_Timing] = []
    remaining = [len(prompts)]
    lock = threading.Lock()
    done = threading.Event()

    def emitter(t: _Timing) -> Callable[[Chunk], None]:
        def emit(chunk: Chunk) -> None:
            now = time.perf_counter()
            t.stamps.extend([now] * len(chunk.token_ids))
            if chunk.finish_reason is not None:
                t.error = chunk.error
                on_last(chunk)
                with lock:
                    remaining[0] -= 1
                    if remaining[0] == 0:
                        done.set()

        return emit

    for prompt in prompts:
        timing = _Timing(time.perf_counter())
        timings.append(timing)
        engine.submit(prompt, params, emitter(timing))
    if not done.wait(_REQUEST_TIMEOUT_S):
        raise QwenkitError(f"the engine did not finish {len(prompts)} request(s) within {_REQUEST_TIMEOUT_S:.0f}s")
    for t in timings:
        if t.error or len(t.stamps) < 2:
            raise QwenkitError(f"a benchmark request failed: {t.error or 'fewer than two tokens came back'}")
    return timings, max(t.stamps[-1] for t in timings)


def _params(engine: Engine, gen_tokens: int) -> SamplingParams:
    """Greedy, exactly `gen_tokens` tokens: end-of-turn tokens can never be picked."""
    suppress = tuple((t, -1000.0) for t in sorted(engine.eos_token_ids()))
    return SamplingParams(max_tokens=gen_tokens, temperature=0.0, logit_bias=suppress)


def _measure_round(config: BenchConfig, repeat: int, step: Callable[[str], None]) -> _Round:
    c = config
    reset_peak_rss()
    reset_peak_gpu()
    started = time.perf_counter()
    model = load(
        c.model,
        engine=c.engine,
        n_ctx=max(c.prompt_tokens, EDIT_PROMPT_TOKENS if c.speculative else 0) + c.gen_tokens + 16,
        n_threads=c.threads,
        n_parallel=max(c.parallel),
        progress=False,
        dtype=c.dtype,
    )
    load_s = time.perf_counter() - started
    step("single stream")
    try:
        engine = model.engine
        params = _params(engine, c.gen_tokens)
        timed_requests(engine, [random_prompt(8, (repeat, 0))], _params(engine, 2))  # warm-up, not measured
        [single], _ = timed_requests(engine, [random_prompt(c.prompt_tokens, (repeat, 1))], params)
        ttft = single.stamps[0] - single.submitted
        decode = (len(single.stamps) - 1) / (single.stamps[-1] - single.stamps[0])
        aggregate: dict[int, float] = {}
        for level in c.parallel:
            step(f"{level} in parallel")
            prompts = [random_prompt(c.prompt_tokens, (repeat, 2, level, i)) for i in range(level)]
            timings, finished = timed_requests(engine, prompts, params)
            aggregate[level] = sum(len(t.stamps) for t in timings) / (finished - timings[0].submitted)
        edit: dict[bool, float] = {}
        accepted = 0.0
        if c.speculative:
            step("code edit, speculation off/on")
            turn = model.prepare(edit_cases(1)[0].message, max_tokens=c.gen_tokens, temperature=0.0)
            for on in (False, True):
                edit[on], share = _edit_decode(engine, turn.prompt, c.gen_tokens, on)
                accepted = share if on else accepted
        rss = peak_rss_bytes()
        gpu = peak_gpu_bytes()
    finally:
        model.close()
    return _Round(load_s, ttft, c.prompt_tokens / ttft, decode, aggregate, rss, gpu, edit, accepted)


EDIT_PROMPT_TOKENS = 4096  # room for the code-edit prompt (a 300-line module is about 2,500 tokens)


def _edit_decode(engine: Engine, prompt: list[int], gen_tokens: int, speculative: bool) -> tuple[float, float]:
    """Greedy decode tokens/s of one request (after its first token), and the share of drafts accepted."""
    last: list[Chunk] = []
    params = SamplingParams(max_tokens=gen_tokens, temperature=0.0, speculative=speculative)
    [timing], _ = timed_requests(engine, [prompt], params, last.append)
    final = last[-1]
    drafted = final.accepted_draft_tokens + final.rejected_draft_tokens
    tps = (len(timing.stamps) - 1) / (timing.stamps[-1] - timing.stamps[0])
    return tps, final.accepted_draft_tokens / drafted if drafted else 0.0


def run_bench(config: BenchConfig, step: Callable[[str], None] = lambda _: None) -> BenchResult:
    """Measure `config.repeat` rounds (interleaved with llama-bench when asked).

    `step(label)` is called as each phase starts, `config.steps()` times in all.
    """
    local = resolve(config.model)
    engine = pick_engine(config.engine, local.format)
    if engine == "transformers" and local.format == "gguf":
        from qwenkit.engines.transformers import convert_gguf

        convert_gguf(local.path)  # converted once and cached, before any load is timed
    binary = None
    if config.vs_llama_bench:
        if local.format != "gguf":
            raise QwenkitError("--vs llama-bench needs a GGUF model file")
        binary = llama_bench_binary()
    threads = config.threads or default_threads()
    result = BenchResult(config, local.name, local.path, local.size, local.format, local.quant, engine, threads)
    load_before = os.getloadavg()
    for r in range(config.repeat):
        reference_first = r % 2 == 1  # ABBA: drift falls on both alike
        if binary is not None and reference_first:
            result.llama_bench.append(_reference(binary, local.path, config, threads, step))
        step(f"repeat {r + 1}: load")
        result.rounds.append(_measure_round(config, r, step))
        if binary is not None and not reference_first:
            result.llama_bench.append(_reference(binary, local.path, config, threads, step))
    result.machine = {
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "memory_bytes": meminfo().get("MemTotal"),
        "loadavg_before": [round(x, 2) for x in load_before],
        "loadavg_after": [round(x, 2) for x in os.getloadavg()],
    }
    return result


def _reference(
    binary: Path, model: Path, config: BenchConfig, threads: int, step: Callable[[str], None]
) -> LlamaBenchRound:
    step("llama-bench")
    return run_llama_bench(
        binary, model, prompt_tokens=config.prompt_tokens, gen_tokens=config.gen_tokens, threads=threads
    )
