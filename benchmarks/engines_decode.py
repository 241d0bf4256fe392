"""Decode speed of the two engines on the same model, in one run: llama.cpp vs transformers.

The embedded GGUF runs natively on llama.cpp (its Q4_K_M weights) and on transformers
dequantized to float32 (the cached conversion), one stream, greedy, end-of-turn tokens
suppressed so every round decodes the same number of tokens: each round is one repeat of
`qwenkit bench` per engine (`qwenkit.bench.speed.run_bench`), alternating between the engines so
that a machine busy with other work slows both alike. Medians of the rounds go, with the load
average, to `benchmarks/results/engines_decode.json`. Usage:

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

from qwenkit.bench.speed import BenchConfig, run_bench

ENGINES = ("llamacpp", "transformers")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="default")
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--prompt-tokens", type=int, default=32)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    import torch
    import transformers

    load_before = os.getloadavg()
    rounds: dict[str, list[dict]] = {name: [] for name in ENGINES}
    for r in range(args.rounds):
        for name in ENGINES if r % 2 == 0 else reversed(ENGINES):
            config = BenchConfig(
                model=args.model,
                engine=name,
                prompt_tokens=args.prompt_tokens,
                gen_tokens=args.tokens,
                parallel=(1,),
                repeat=1,
                threads=args.threads,
                dtype="fp32" if name == "transformers" else "auto",
            )
            rounds[name].append(run_bench(config).to_dict())
        print(
            f"round {r + 1}: "
            + ", ".join(f"{n} {rounds[n][-1]['decode_tokens_per_s']['median']:.2f} tok/s" for n in ENGINES),
            flush=True,
        )

    def median(name: str, key: str) -> float:
        return statistics.median(run[key]["median"] for run in rounds[name])

    first = rounds["llamacpp"][0]
    result = {
        "model": first["model"],
        "gguf": Path(first["model_file"]).name,
        "quant_llamacpp": first["quantization"],
        "dtype_transformers": "float32",
        "threads": args.threads,
        "prompt_tokens": args.prompt_tokens,
        "decode_tokens": args.tokens,
        "rounds": args.rounds,
        "measured_at": time.strftime("%Y-%m-%d", time.gmtime()),
        "llamacpp_decode_tps": median("llamacpp", "decode_tokens_per_s"),
        "transformers_decode_tps": median("transformers", "decode_tokens_per_s"),
        "llamacpp_ttft_s": median("llamacpp", "ttft_s"),
        "transformers_ttft_s": median("transformers", "ttft_s"),
        "all_rounds_tps": {n: [run["decode_tokens_per_s"]["median"] for run in rounds[n]] for n in ENGINES},
        "load_s": {
            "llamacpp": median("llamacpp", "load_s"),
            "transformers_from_cache": median("transformers", "load_s"),
        },
        "peak_rss_bytes": {n: max(run["peak_rss_bytes"]["max"] for run in rounds[n]) for n in ENGINES},
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "loadavg_before": [round(x, 2) for x in load_before],
            "loadavg_after": [round(x, 2) for x in os.getloadavg()],
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "cuda": torch.cuda.is_available(),
        },
    }
    result["llamacpp_over_transformers"] = result["llamacpp_decode_tps"] / max(result["transformers_decode_tps"], 1e-9)
    out = Path(__file__).parent / "results"
    out.mkdir(exist_ok=True)
    (out / "engines_decode.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
