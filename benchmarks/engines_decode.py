"""Decode speed of the two engines on the same model, in one run: llama.cpp vs transformers.

The embedded GGUF runs natively on llama.cpp (its Q4_K_M weights) and on transformers
dequantized to float32 (the cached conversion), single stream, greedy, end-of-turn tokens
suppressed so every round decodes the same number of tokens. Rounds alternate between the
engines so that a machine busy with other work slows both alike; the median of the rounds is
reported, with the load average, in `benchmarks/results/engines_decode.json`. Usage:

    .venv/bin/python benchmarks/engines_decode.py [--model default] [--threads N] [--tokens 64] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

PROMPT = (
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
    "Write a long, detailed story about a lighthouse keeper who finds a map.<|im_end|>\n<|im_start|>assistant\n"
)


def decode_tps(engine, prompt: list[int], tokens: int) -> tuple[float, float]:
    """(decode tokens/s after the first token, seconds to the first token)."""
    from qwenkit.engines.base import SamplingParams

    suppress = tuple((t, -1000.0) for t in sorted(engine.eos_token_ids()))
    params = SamplingParams(max_tokens=tokens, temperature=0.0, logit_bias=suppress)
    start = time.perf_counter()
    stamps = [time.perf_counter() for chunk in engine.generate(prompt, params) if chunk.token_ids]
    n = len(stamps) - 1
    return (n / (stamps[-1] - stamps[0]) if n > 0 else 0.0), stamps[0] - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="default")
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    import torch
    import transformers

    from qwenkit import store
    from qwenkit.engines.llamacpp import LlamaCppEngine, LlamaCppSettings
    from qwenkit.engines.transformers import TransformersEngine, TransformersSettings

    local = store.resolve(args.model)
    if local.format != "gguf":
        raise SystemExit("this benchmark compares the engines on a GGUF model")
    load_before = os.getloadavg()
    t0 = time.perf_counter()
    llama = LlamaCppEngine(local.path, LlamaCppSettings(n_ctx=1024, n_threads=args.threads))
    llama_load = time.perf_counter() - t0
    t0 = time.perf_counter()
    hf = TransformersEngine(
        local.path, TransformersSettings(n_ctx=1024, n_parallel=1, n_threads=args.threads, dtype="fp32")
    )
    hf_load = time.perf_counter() - t0  # the conversion is cached: this is the load of the converted checkpoint
    prompt = llama.tokenize(PROMPT)
    assert prompt == hf.tokenize(PROMPT)
    engines = {"llamacpp": llama, "transformers": hf}
    for engine in engines.values():  # warm-up
        decode_tps(engine, prompt, 4)
    runs: dict[str, list[float]] = {name: [] for name in engines}
    ttft: dict[str, list[float]] = {name: [] for name in engines}
    for r in range(args.rounds):
        for name, engine in engines.items():
            tps, first = decode_tps(engine, prompt, args.tokens)
            runs[name].append(tps)
            ttft[name].append(first)
        print(f"round {r + 1}: " + ", ".join(f"{n} {runs[n][-1]:.2f} tok/s" for n in engines), flush=True)
    load_after = os.getloadavg()
    result = {
        "model": local.name,
        "gguf": local.path.name,
        "quant_llamacpp": local.quant,
        "dtype_transformers": str(hf.model.dtype).removeprefix("torch."),
        "converted_checkpoint": str(hf.path),
        "threads": args.threads,
        "prompt_tokens": len(prompt),
        "decode_tokens": args.tokens,
        "rounds": args.rounds,
        "llamacpp_decode_tps": statistics.median(runs["llamacpp"]),
        "transformers_decode_tps": statistics.median(runs["transformers"]),
        "llamacpp_ttft_s": statistics.median(ttft["llamacpp"]),
        "transformers_ttft_s": statistics.median(ttft["transformers"]),
        "all_rounds_tps": runs,
        "load_s": {"llamacpp": round(llama_load, 2), "transformers_from_cache": round(hf_load, 2)},
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "loadavg_before": [round(x, 2) for x in load_before],
            "loadavg_after": [round(x, 2) for x in load_after],
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "cuda": torch.cuda.is_available(),
        },
    }
    result["llamacpp_over_transformers"] = result["llamacpp_decode_tps"] / max(result["transformers_decode_tps"], 1e-9)
    llama.close()
    hf.close()
    out = Path(__file__).parent / "results"
    out.mkdir(exist_ok=True)
    (out / "engines_decode.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
