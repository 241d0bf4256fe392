"""Which Qwen variant to run for a task on a device: ranked picks with reasons and commands.

Ranking, stated so it can be argued with:
- quality ~ log2(parameters in billions); a MoE counts as sqrt(total x active) (a common rule
  of thumb for MoE capability); a specialist for the task (Qwen2.5-Coder and Qwen3-Coder for
  code, Math for math, VL for vision) or a thinking model for reasoning gets +1 (as if twice the
  size); a later generation gets its `GENERATION` bonus (Qwen3-2507 +0.3; Qwen3-Coder,
  Qwen3-Next, Qwen3.5, 3.6 and 3.8 +1: a rule of thumb, not a measurement, that counts the
  2025-2026 generations as if twice the size of an earlier model); a vision or audio model asked
  for another task -0.5 (its tower costs memory for nothing);
- quantization costs: q2_k -1.5, q3_k_m -0.7, q4_0 -0.35, q4_k_m/AWQ/GPTQ-Int4 -0.2, q5 -0.05..-0.1;
- speed: below the target decode speed (10 tok/s unless a floor is given) costs
  1.5 x log2(target / expected); below an explicit `--min-speed` floor a pick is dropped;
- it must fit: required memory (memory.Estimate.required) at most 95% of what is available;
  above 80% it is a tight fit (little left for the rest of the machine): it costs 0.5 and ranks
  after every pick that fits with headroom, a warning rather than a first pick.
The picks are ordered by that score; with `Ask.largest` by quality alone (size, specialty,
quantization: the largest model that fits first, tight or slow).
Expected decode speed = bandwidth x 0.6 / bytes read per token (the weights of the active
parameters, the KV cache at half the context, a hybrid's recurrent state): decoding is
memory-bound, and 60% of peak bandwidth is what llama.cpp typically sustains.
A hybrid model (Qwen3.5, Qwen3-Next) says what its long context costs: KV in a quarter of its
layers plus a fixed recurrent state, beside the KV of the Qwen3 model nearest its size.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

from qwenkit.catalog.device import Device
from qwenkit.catalog.family import Catalog, Variant
from qwenkit.catalog.memory import HEADROOM, Estimate, estimate_variant, kv_bytes, state_bytes
from qwenkit.catalog.schema import Entry
from qwenkit.errors import QwenkitError

TASKS = ("chat", "code", "math", "reasoning", "vision", "multilingual", "tools")
TIGHT = 0.8
BANDWIDTH_EFFICIENCY = 0.6
TARGET_TPS = 10.0
DEFAULT_CONTEXT = {"reasoning": 32768, "math": 4096}  # thinking needs room; Qwen2.5-Math is 4K
QUANT_COST = {
    "q2_k": 1.5,
    "q3_k_m": 0.7,
    "q4_0": 0.35,
    "q4_k_m": 0.2,
    "awq": 0.2,
    "gptq-int4": 0.2,
    "q5_0": 0.1,
    "q5_k_m": 0.05,
}
SPECIALIST = {"code": ("qwen2.5-coder", "qwen3-coder"), "math": ("qwen2.5-math",), "vision": ("qwen2.5-vl",)}
GENERATION = {
    "qwen3-2507": (0.3, "Qwen3-2507: the July 2025 refresh, 256K native context"),
    "qwen3-coder": (1.0, "Qwen3-Coder: the agentic coding generation, 256K native context"),
    "qwen3-next": (1.0, "Qwen3-Next: hybrid attention, 256K native context"),
    "qwen3.5": (1.0, "Qwen3.5: the 2026 generation, 256K native context"),
    "qwen3.5-moe": (1.0, "Qwen3.5: the 2026 generation, 256K native context"),
    "qwen3.6": (1.0, "Qwen3.6: a later release on the Qwen3.5 architecture"),
    "qwen3.8": (1.0, "Qwen3.8: a later release on the Qwen3.5 architecture"),
}
TRANSFORMER_PEERS = ("qwen3", "qwen3-moe")  # what a hybrid model's context cost is set beside


@dataclass(frozen=True)
class Ask:
    """What the user wants."""

    task: str = "chat"
    n_ctx: int | None = None  # None: per task (DEFAULT_CONTEXT, else 8192)
    n_parallel: int = 1
    min_tps: float | None = None
    model: str | None = None  # restrict to one catalogue entry
    largest: bool = False  # rank by quality alone: the largest model that fits first, tight or slow

    @property
    def context(self) -> int:
        return self.n_ctx or DEFAULT_CONTEXT.get(self.task, 8192)


@dataclass
class Pick:
    variant: Variant
    engine: str
    n_ctx: int
    estimate: Estimate
    tps: float
    score: float
    reasons: list[str] = field(default_factory=list)
    thinking_budget: int | None = None
    quality: float = 0.0  # the score before the speed and tight-fit costs
    tight: bool = False  # needs more than TIGHT of the memory

    def rank(self, largest: bool) -> tuple[float, ...]:
        """Sort key, best first when reversed: quality alone, or headroom first, then the score."""
        return (self.quality,) if largest else (not self.tight, self.score)

    def commands(self, n_parallel: int) -> dict[str, str]:
        name = self.variant.name
        eng = " --engine transformers" if self.engine == "transformers" else ""
        think = f" --think --thinking-budget {self.thinking_budget}" if self.thinking_budget else ""
        return {
            "pull": f"qwenkit pull {name}",
            "run": f'qwenkit run -m {name} --ctx {self.n_ctx}{eng}{think} "your prompt"',
            "serve": f"qwenkit serve -m {name} --ctx {self.n_ctx} --parallel {n_parallel}{eng}",
        }

    def to_dict(self, n_parallel: int) -> dict[str, object]:
        e = self.variant.entry
        return {
            "model": self.variant.name,
            "engine": self.engine,
            "context": self.n_ctx,
            "memory_bytes": self.estimate.required,
            "memory_peak_rss_bytes": self.estimate.total,
            "memory_parts": self.estimate.parts(),
            "expected_tokens_per_s": round(self.tps, 1),
            "thinking": e.thinking,
            "thinking_budget": self.thinking_budget,
            "license": e.license,
            "score": round(self.score, 3),
            "reasons": self.reasons,
            "commands": self.commands(n_parallel),
        }


@dataclass
class Advice:
    picks: list[Pick]
    notes: list[str]  # what would fit when nothing does, and assumptions


def recommend(cat: Catalog, ask: Ask, device: Device, *, budget: int | None = None, top: int = 5) -> Advice:
    """Ranked picks for `ask` on `device` within `budget` bytes (default: what is available)."""
    if ask.task not in TASKS:
        raise QwenkitError(f"unknown task {ask.task!r}; choose one of {', '.join(TASKS)}")
    if ask.n_parallel < 1 or ask.context < 256:
        raise QwenkitError("context must be at least 256 tokens and parallel users at least 1")
    memory = budget if budget is not None else device.available
    entries = [cat.get(ask.model)] if ask.model else [e for e in cat.entries.values() if _serves(e, ask.task)]
    if not entries:
        raise QwenkitError(f"no catalogue model is suited to {ask.task}")
    picks: list[Pick] = []
    for entry in entries:
        best = max(
            (p for v in _runnable(cat, entry, device) if (p := _consider(cat, v, ask, device, memory)) is not None),
            key=lambda p: (*p.rank(ask.largest), p.variant.bits_per_weight),  # on a tie, the more precise quant
            default=None,
        )
        if best is not None:
            picks.append(best)
    picks.sort(key=lambda p: p.rank(ask.largest), reverse=True)
    notes = [
        f"speed assumes decoding reads the active weights and half the KV cache per token at "
        f"{BANDWIDTH_EFFICIENCY:.0%} of {device.bandwidth_source}",
    ]
    if not picks:
        notes = _what_would_fit(cat, entries, ask, device, memory) + notes
    return Advice(picks[:top], notes)


def _serves(entry: Entry, task: str) -> bool:
    if task == "reasoning":
        return entry.thinking != "none"
    return task in entry.specialties


def _runnable(cat: Catalog, entry: Entry, device: Device) -> list[Variant]:
    """GGUFs everywhere (llama.cpp); checkpoints on CUDA (transformers); on a CPU or Apple GPU the
    original checkpoint only where there is no GGUF (AWQ, GPTQ and FP8 kernels need CUDA)."""
    variants = cat.variants(entry)
    if device.kind == "cuda":
        return variants
    ggufs = [v for v in variants if v.format == "gguf"]
    return ggufs or [v for v in variants if v.quant == "bf16"]


def _consider(cat: Catalog, v: Variant, ask: Ask, device: Device, memory: int) -> Pick | None:
    entry = v.entry
    n_ctx = ask.context
    if n_ctx > entry.max_context:
        return None
    if v.mmproj is None and v.format == "gguf" and entry.vision is not None and entry.gguf and not entry.gguf.mmproj:
        return None
    est = estimate_variant(cat, v, n_ctx=n_ctx, n_parallel=ask.n_parallel, device=device.kind)
    if est.required > memory * HEADROOM:
        return None
    tps = decode_tps(cat, v, est, n_ctx, device)
    if ask.min_tps is not None and tps < ask.min_tps:
        return None
    quality, score, reasons = _score(cat, v, ask, tps, est, memory)
    budget = min(8192, n_ctx // 2) if entry.thinking != "none" else None
    engine = "llamacpp" if v.format == "gguf" else "transformers"
    if engine == "llamacpp" and device.kind != "cpu":
        reasons.append("on the GPU only with a CUDA/Metal build of llama-cpp-python")
    return Pick(v, engine, n_ctx, est, tps, score, reasons, budget, quality, est.required > TIGHT * memory)


def decode_tps(cat: Catalog, v: Variant, est: Estimate, n_ctx: int, device: Device) -> float:
    """Expected tokens/s for one sequence: memory bandwidth over bytes read per token."""
    shape = cat.shape(v.entry)
    weights = est.weights
    if shape.is_moe:
        weights = int(weights * cat.params(v.entry, active=True) / cat.params(v.entry))
    per_token = weights + kv_bytes(shape, n_ctx, 1) / 2 + state_bytes(shape, 1)
    return device.bandwidth_gbs * 1e9 * BANDWIDTH_EFFICIENCY / per_token


def _score(
    cat: Catalog, v: Variant, ask: Ask, tps: float, est: Estimate, memory: int
) -> tuple[float, float, list[str]]:
    """(quality, score, reasons): quality from size, specialty and quantization; the score also
    weighs expected speed and headroom."""
    entry = v.entry
    params = cat.params(entry) / 1e9
    reasons = []
    if entry.active_params_b:
        effective = math.sqrt(entry.params_b * entry.active_params_b)
        reasons.append(f"MoE: {entry.params_b:g}B total, {entry.active_params_b:g}B active (fast for its size)")
    else:
        effective = params
    score = math.log2(effective)
    if entry.family in SPECIALIST.get(ask.task, ()):
        score += 1
        reasons.append(f"{entry.family} is specialised for {ask.task}")
    if ask.task == "reasoning" and entry.thinking != "none":
        score += 1
        reasons.append(
            "thinking model" if entry.thinking == "thinking-only" else "hybrid thinking (on or off per request)"
        )
    if entry.vision is not None and ask.task not in ("vision", "audio"):
        score -= 0.5
        reasons.append("carries a vision/audio tower this task does not use")
    if entry.family in GENERATION:
        bonus, why = GENERATION[entry.family]
        score += bonus
        reasons.append(why)
    if cat.shape(entry).is_hybrid:
        reasons.append(_context_cost(cat, entry, ask))
    cost = QUANT_COST.get(v.quant, 0.0)
    score -= cost
    reasons.append(
        f"{v.quant} is the best quantization that fits" + (" (lossless enough)" if cost <= 0.05 else f" (-{cost})")
    )
    quality = score
    target = ask.min_tps or TARGET_TPS
    if tps < target:
        score -= 1.5 * math.log2(target / tps)
        reasons.append(f"slow here: ~{tps:.1f} tok/s expected")
    reasons.append(f"needs {est.required / 2**30:.1f} GiB of {memory / 2**30:.1f} GiB")
    if est.required > TIGHT * memory:
        score -= 0.5
        reasons.append("a tight fit: little left for the rest of the machine (ranked after roomier picks)")
    if entry.license != "apache-2.0":
        reasons.append(f"licence: {entry.license} (not Apache-2.0)")
    return quality, score, reasons


def _context_cost(cat: Catalog, entry: Entry, ask: Ask) -> str:
    """What a hybrid model's context costs, beside the KV of the Qwen3 transformer (dense or MoE
    as it is) nearest its size."""
    shape = cat.shape(entry)
    n_ctx, gib = ask.context, 2**30
    kv = kv_bytes(shape, n_ctx, ask.n_parallel)
    state = state_bytes(shape, ask.n_parallel)
    text = (
        f"hybrid attention: a KV cache in {shape.attention_layers} of {shape.layers} layers, "
        f"{kv / gib:.1f} GiB at {n_ctx} tokens, plus {state / 2**20:.0f} MiB of recurrent state"
    )
    peers = [
        e
        for e in cat.entries.values()
        if e.family in TRANSFORMER_PEERS and not cat.shape(e).is_hybrid and cat.shape(e).is_moe == shape.is_moe
    ]
    if not peers:
        return text
    peer = min(peers, key=lambda e: abs(math.log(cat.params(e) / cat.params(entry))))
    peer_kv = kv_bytes(cat.shape(peer), n_ctx, ask.n_parallel)
    return f"{text} ({peer.name} would need {peer_kv / gib:.1f} GiB of KV: {(kv + state) / peer_kv:.0%} of it)"


def _what_would_fit(cat: Catalog, entries: list[Entry], ask: Ask, device: Device, memory: int) -> list[str]:
    """When nothing fits: the largest context, the smallest quantization, another model or device."""
    notes: list[str] = []
    too_long = [e for e in entries if ask.context > e.max_context]
    if too_long and len(too_long) == len(entries):
        longest = max(e.max_context for e in entries)
        notes.append(f"{ask.context} tokens is past these models' context (at most {longest}, with YaRN)")
    candidates = [(e, v) for e in entries for v in _runnable(cat, e, device)]
    if not candidates:
        return notes
    # the candidate closest to fitting: the smallest quantization of the smallest model
    entry, smallest = min(
        candidates,
        key=lambda ev: estimate_variant(cat, ev[1], n_ctx=256, device=device.kind).required,
    )
    n_ctx = min(ask.context, entry.max_context)
    need = estimate_variant(cat, smallest, n_ctx=n_ctx, n_parallel=ask.n_parallel, device=device.kind)
    kv = need.kv
    notes.append(
        f"{smallest.name} at {n_ctx} tokens x {ask.n_parallel} needs {need.required / 2**30:.1f} GiB "
        f"(KV cache {kv / 2**30:.1f} GiB, weights {need.weights / 2**30:.1f} GiB); "
        f"{memory * HEADROOM / 2**30:.1f} GiB is usable here"
    )
    fits_ctx = _largest_context(cat, smallest, ask, device, memory)
    if fits_ctx:
        notes.append(f"it fits with --ctx {fits_ctx} (less context)")
    else:
        notes.append(f"even its weights do not fit: a smaller model, or a device with {need.required / 2**30:.0f} GiB")
    others = (
        recommend(cat, Ask(ask.task, ask.n_ctx, ask.n_parallel, ask.min_tps), device, budget=memory, top=1).picks
        if ask.model
        else []
    )
    if others:
        notes.append(
            f"at the full context, {others[0].variant.name} fits ({others[0].estimate.required / 2**30:.1f} GiB)"
        )
    if ask.min_tps is not None:
        unhurried = recommend(cat, replace(ask, min_tps=None), device, budget=memory, top=1).picks
        if unhurried:
            fastest = unhurried[0]
            notes.append(
                f"{fastest.variant.name} fits but decodes at ~{fastest.tps:.1f} tok/s, under the "
                f"--min-speed {ask.min_tps:g}: a device with more memory bandwidth (a GPU) would reach it"
            )
    if device.kind == "cpu":
        notes.append(f"or a GPU with at least {need.required / 2**30 + 0.5:.0f} GiB free")
    return notes


def _largest_context(cat: Catalog, v: Variant, ask: Ask, device: Device, memory: int) -> int:
    """The largest context (a multiple of 1024) at which `v` fits, or 0."""
    lo, hi = 0, min(ask.context, v.entry.max_context) // 1024
    while lo < hi:
        mid = (lo + hi + 1) // 2
        est = estimate_variant(cat, v, n_ctx=mid * 1024, n_parallel=ask.n_parallel, device=device.kind)
        if est.required <= memory * HEADROOM:
            lo = mid
        else:
            hi = mid - 1
    return lo * 1024
