"""Memory estimate against reality: peak RSS of the real embedded GGUFs, fresh process each.

For each model x context x parallel sequences, a child process loads the GGUF through
`qwenkit.load` exactly as `qwenkit serve` does, runs one prompt longer than n_batch (so the
worst-case compute graph runs) and a short one on every other sequence, all at once, plus a few
decoded tokens, and reports its peak RSS (VmHWM). The parent prints qwenkit's estimate for the same settings and the
error. Results go to benchmarks/results/memory_estimate.json.

    python benchmarks/memory_estimate.py [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
THREADS = 2
CHILD = r"""
import json, sys, time
import qwenkit
path, ctx, par = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
def status():
    fields = {}
    for line in open("/proc/self/status"):
        k, _, v = line.partition(":")
        if k in ("VmHWM", "VmRSS", "RssAnon", "RssFile"):
            fields[k] = int(v.split()[0]) * 1024
    return fields
base = status()
t = time.time()
with qwenkit.load(path, n_ctx=ctx, n_parallel=par, n_threads=int(sys.argv[4]), progress=False) as m:
    words = " ".join(f"item{i}" for i in range(300))  # ~600 tokens: one full n_batch ubatch of 512
    # one long prompt runs the worst-case compute graph; the others only need a slot each (the KV
    # cache of every slot is written in full at context creation, so it is resident anyway)
    prompts = [f"Count the items: {words}"] + [f"Say {k}." for k in range(1, par)]
    m.batch(prompts, max_tokens=4, temperature=0)
    peak = status()
print(json.dumps({"baseline": base, "peak": peak, "seconds": time.time() - t}))
"""


def measure(path: str, ctx: int, par: int) -> dict[str, dict[str, int]]:
    env = dict(os.environ, OMP_WAIT_POLICY="PASSIVE")
    out = subprocess.run(
        [sys.executable, "-c", CHILD, path, str(ctx), str(par), str(THREADS)],
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
    )
    if out.returncode:
        raise RuntimeError(out.stderr.strip().splitlines()[-1] if out.stderr.strip() else "child failed")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    from qwenkit import store
    from qwenkit.catalog.memory import N_UBATCH, estimate_gguf
    from qwenkit.engines.llamacpp.dryrun import dry_run

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="one model, one context")
    args = ap.parse_args()
    models = (
        ["qwen2.5-coder-0.5b-instruct"]
        if args.quick
        else ["qwen2.5-coder-0.5b-instruct", "qwen2.5-coder-1.5b-instruct"]
    )
    contexts = [2048] if args.quick else [2048, 8192]
    rows = []
    for name in models:
        local = store.resolve(name)
        for ctx in contexts:
            for par in (1, 4):
                est = estimate_gguf(local.path, n_ctx=ctx, n_parallel=par, dry_run=dry_run)
                formula = estimate_gguf(local.path, n_ctx=ctx, n_parallel=par)
                got = measure(str(local.path), ctx, par)
                peak = got["peak"]["VmHWM"]
                err = est.total / peak - 1
                rows.append(
                    {
                        "model": name,
                        "quantization": local.quant,
                        "n_ctx": ctx,
                        "n_parallel": par,
                        "estimate": est.total,
                        "required": est.required,
                        "estimate_parts": est.parts(),
                        "source": est.source,
                        "peak_rss": peak,
                        "formula_estimate": formula.total,
                        "formula_error": round(formula.total / peak - 1, 4),
                        "rss_anon": got["peak"]["RssAnon"],
                        "rss_file": got["peak"]["RssFile"],
                        "error": round(err, 4),
                    }
                )
                print(
                    f"{name:28s} ctx {ctx:5d} x{par}  estimate {est.total / 2**20:7.0f} MiB  "
                    f"peak RSS {peak / 2**20:7.0f} MiB  error {err:+.1%} "
                    f"(metadata formula {formula.total / peak - 1:+.1%})",
                    flush=True,
                )
    result = {
        "machine": f"{platform.machine()} {os.cpu_count()} cores, shared with other jobs",
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "n_batch": N_UBATCH,
        "n_threads": THREADS,
        "rows": rows,
        "max_abs_error": max(abs(r["error"]) for r in rows),
        "worst_under": min(r["error"] for r in rows),
    }
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / "memory_estimate.json").write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
