"""Single-stream decode and prefill: `qwenkit bench --vs llama-bench`, kept as a result file.

qwenkit's engine and llama.cpp's `llama-bench` run on the same GGUF with the same threads,
repeat by repeat in alternating order (`qwenkit.bench.speed`); the ratios qwenkit / llama-bench
are the numbers to track. Usage:

    .venv/bin/python benchmarks/decode_speed.py [--model default] [--threads 2] [--repeat 5]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

from qwenkit.bench.speed import BenchConfig, run_bench

RESULTS = Path(__file__).parent / "results"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="default")
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--prompt-tokens", type=int, default=128)
    parser.add_argument("--gen-tokens", type=int, default=128)
    args = parser.parse_args()
    config = BenchConfig(
        model=args.model,
        prompt_tokens=args.prompt_tokens,
        gen_tokens=args.gen_tokens,
        parallel=(1,),  # aggregate throughput is the serving benchmark's
        repeat=args.repeat,
        threads=args.threads,
        vs_llama_bench=True,
    )
    result = run_bench(config, lambda label: print(label, flush=True)).to_dict()
    result["measured_at"] = time.strftime("%Y-%m-%d", time.gmtime())
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "decode_speed.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result["qwenkit_over_llama_bench"], indent=2))


if __name__ == "__main__":
    main()
