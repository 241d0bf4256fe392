"""Reading a GGUF's metadata: qwenkit's reader (`store.gguf_header`) against `gguf.GGUFReader`.

The test fixtures read the real model's tokenizer (151,936 tokens) on every tiny-model build, and
the store reads `general.file_type` for every listed model, so the reader must be fast. Both run
on the same file, interleaved round by round; the ratio is the number to track. Results go to
benchmarks/results/gguf_metadata.json. Usage:

    .venv/bin/python benchmarks/gguf_metadata.py [--model default] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import gguf

from qwenkit import store
from qwenkit.store.gguf_header import read_metadata

HERE = Path(__file__).resolve().parent


def theirs(path: Path) -> int:
    reader = gguf.GGUFReader(path)
    return len(reader.fields["tokenizer.ggml.tokens"].contents())


def ours(path: Path) -> int:
    return len(read_metadata(path)["tokenizer.ggml.tokens"].value)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="default")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    path = Path(store.resolve(args.model, progress=False).path)
    times: dict[str, list[float]] = {"gguf.GGUFReader": [], "qwenkit read_metadata": []}
    load_before = os.getloadavg()
    for _ in range(args.rounds):
        for name, read in (("gguf.GGUFReader", theirs), ("qwenkit read_metadata", ours)):
            start = time.perf_counter()
            n_tokens = read(path)
            times[name].append(time.perf_counter() - start)
    print(f"{path.name}: {n_tokens} tokens, all metadata keys, {args.rounds} rounds")
    for name, values in times.items():
        print(
            f"  {name:24s} median {statistics.median(values):7.3f} s  (rounds: {', '.join(f'{v:.3f}' for v in values)})"
        )
    ratio = statistics.median(times["gguf.GGUFReader"]) / statistics.median(times["qwenkit read_metadata"])
    print(f"  qwenkit is {ratio:.0f}x faster")
    result = {
        "measured_at": time.strftime("%Y-%m-%d", time.gmtime()),
        "model": f"`{path.name}`",
        "tokens": n_tokens,
        "rounds": args.rounds,
        "gguf_reader_s": {"median": statistics.median(times["gguf.GGUFReader"]), "rounds": times["gguf.GGUFReader"]},
        "qwenkit_s": {
            "median": statistics.median(times["qwenkit read_metadata"]),
            "rounds": times["qwenkit read_metadata"],
        },
        "gguf_reader_over_qwenkit": ratio,
        "machine": {
            "cpus": os.cpu_count(),
            "loadavg_before": [round(x, 2) for x in load_before],
            "loadavg_after": [round(x, 2) for x in os.getloadavg()],
        },
    }
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / "gguf_metadata.json").write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
