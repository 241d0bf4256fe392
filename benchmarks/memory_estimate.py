"""Memory estimate against reality: peak RSS of the real embedded GGUFs, fresh process each.

For each model x context x parallel sequences, a child process loads the GGUF through
`qwenkit.load` exactly as `qwenkit serve` does, runs one prompt longer than n_batch (so the
worst-case compute graph runs) and a short one on every other sequence, all at once, plus a few
decoded tokens, and reports its peak RSS (VmHWM). The parent prints qwenkit's estimate for the same settings and the
error. Results go to benchmarks/results/memory_estimate.json.

`--gguf PATH ...` measures those files instead (the tiny hybrid Qwen3.5 / Qwen3.5-MoE /
Qwen3-Next GGUFs of `qwenkit.testing.tiny_hybrid.tiny_hybrid_gguf`, whose recurrent state and
full-attention-only KV the estimate must get right), into memory_estimate_hybrid.json, with
llama.cpp's dry run of every Qwen3.5 shape of the catalogue beside the formula's (sparse GGUFs
of `qwenkit.testing.sparse`: the real tensor table, no data) for KV, recurrent state and compute.

    python benchmarks/memory_estimate.py [--quick] [--gguf PATH ...]
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
    ap.add_argument("--gguf", nargs="+", type=Path, help="measure these GGUFs (named by their architecture)")
    args = ap.parse_args()
    models = (
        ["qwen2.5-coder-0.5b-instruct"]
        if args.quick
        else ["qwen2.5-coder-0.5b-instruct", "qwen2.5-coder-1.5b-instruct"]
    )
    files = [(*_architecture_and_type(p), p) for p in args.gguf or []]
    for name in [] if args.gguf else models:
        local = store.resolve(name)
        files.append((name, local.quant, local.path))
    contexts = [2048] if args.quick else [2048, 8192]
    rows = []
    for name, quant, path in files:
        for ctx in contexts:
            for par in (1, 4):
                est = estimate_gguf(path, n_ctx=ctx, n_parallel=par, dry_run=dry_run)
                formula = estimate_gguf(path, n_ctx=ctx, n_parallel=par)
                got = measure(str(path), ctx, par)
                peak = got["peak"]["VmHWM"]
                err = est.total / peak - 1
                rows.append(
                    {
                        "model": name,
                        "quantization": quant,
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
    result: dict[str, object] = {
        "machine": f"{platform.machine()} {os.cpu_count()} cores, shared with other jobs",
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "n_batch": N_UBATCH,
        "n_threads": THREADS,
        "rows": rows,
        "max_abs_error": max(abs(r["error"]) for r in rows),
        "worst_under": min(r["error"] for r in rows),
    }
    if args.gguf:
        result["shapes"] = real_shapes()
    (HERE / "results").mkdir(exist_ok=True)
    name = "memory_estimate_hybrid.json" if args.gguf else "memory_estimate.json"
    (HERE / "results" / name).write_text(json.dumps(result, indent=2) + "\n")


def real_shapes() -> list[dict[str, object]]:
    """llama.cpp's dry run against the formula for each Qwen3.5 shape, at 8K x 1, 128K x 1, 32K x 4."""
    import tempfile

    from qwenkit.catalog import catalog
    from qwenkit.catalog.memory import estimate_gguf
    from qwenkit.engines.llamacpp.dryrun import dry_run
    from qwenkit.testing.sparse import sparse_hybrid_gguf
    from qwenkit.testing.tiny import default_source_gguf

    cat, source, rows = catalog(), default_source_gguf(), []
    names = [e.name for e in cat.entries.values() if e.family in ("qwen3.5", "qwen3.5-moe")]
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            path = sparse_hybrid_gguf(Path(tmp) / f"{name}.gguf", cat.shape(cat.get(name)), source)
            for ctx, par in ((8192, 1), (131072, 1), (32768, 4)):
                llama = estimate_gguf(path, n_ctx=ctx, n_parallel=par, dry_run=dry_run)
                formula = estimate_gguf(path, n_ctx=ctx, n_parallel=par)
                rows.append(
                    {"model": name, "n_ctx": ctx, "n_parallel": par}
                    | {f"{part}_llama": getattr(llama, part) for part in ("kv", "state", "compute")}
                    | {f"{part}_formula": getattr(formula, part) for part in ("kv", "state", "compute")}
                )
                print(f"{name:20s} {ctx:6d} x{par}  kv/state/compute {rows[-1]}", flush=True)
            path.unlink()
    return rows


def _architecture_and_type(path: Path) -> tuple[str, str]:
    """The file's `general.architecture` and its weight type (e.g. "qwen35", "ALL_F32")."""
    from gguf import LlamaFileType

    from qwenkit.store.gguf_header import decoded, read_metadata

    meta = read_metadata(path, ("general.architecture", "general.file_type"))
    file_type = LlamaFileType(meta["general.file_type"].value).name.removeprefix("MOSTLY_")
    return str(decoded(meta["general.architecture"].value)), file_type


if __name__ == "__main__":
    main()
