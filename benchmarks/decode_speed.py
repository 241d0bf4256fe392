"""Single-stream decode speed: `qwenkit run` against llama.cpp's `llama-bench` tg128.

Both run on the same GGUF with the same threads, interleaved round by round in one run, and the
ratio (qwenkit / llama-bench) is the number to track. Usage:

    .venv/bin/python benchmarks/decode_speed.py [--model default] [--threads 2] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from qwenkit.engines.llamacpp.vendor import tool

PROMPT = "Write a long, detailed story about a lighthouse keeper who finds a map. Do not stop early."


def llama_bench(binary: Path, model: Path, threads: int) -> float:
    out = subprocess.run(
        [str(binary), "-m", str(model), "-t", str(threads), "-p", "0", "-n", "128", "-r", "3", "-o", "json"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return float(json.loads(out)[0]["avg_ts"])


def qwenkit_run(model: str, threads: int) -> float:
    qwenkit = Path(sys.executable).with_name("qwenkit")
    out = subprocess.run(
        [
            str(qwenkit),
            "run",
            "--json",
            "--model",
            model,
            "--threads",
            str(threads),
            "--temperature",
            "0",
            "--max-tokens",
            "128",
            PROMPT,
        ],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return float(json.loads(out)["timings"]["decode_tokens_per_s"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="default")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    from qwenkit import store

    path = store.resolve(args.model).path
    bench = tool("llama-bench")
    ours, theirs = [], []
    for r in range(args.rounds):
        if bench is not None:
            theirs.append(llama_bench(bench, path, args.threads))
        ours.append(qwenkit_run(args.model, args.threads))
        print(
            f"round {r + 1}: qwenkit {ours[-1]:.1f} tok/s"
            + (f", llama-bench tg128 {theirs[-1]:.1f} tok/s" if theirs else "")
        )
    result = {"model": args.model, "threads": args.threads, "qwenkit_tps": statistics.median(ours)}
    if theirs:
        result["llama_bench_tg128_tps"] = statistics.median(theirs)
        result["ratio"] = result["qwenkit_tps"] / result["llama_bench_tg128_tps"]
    else:
        result["note"] = "llama-bench unavailable: no ratio"
    out = Path(__file__).parent / "results"
    out.mkdir(exist_ok=True)
    (out / "decode_speed.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
