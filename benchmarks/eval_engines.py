"""HumanEval pass@1 of one GGUF through three paths: `qwenkit eval` in-process, against `qwenkit serve`, and
against llama.cpp's own `llama-server` (the vendored build), each greedy, with the same prompts and scoring.

    python benchmarks/eval_engines.py [--model default] [--limit N] [--only inprocess,serve,llama-server]
    python benchmarks/eval_engines.py --report        # the markdown table for EVALS.md from the result files

Results go to benchmarks/results/evals/<model>/<path>/ (run.json + problems.jsonl); a rerun resumes
whatever is unfinished there. Servers listen on 127.0.0.1 only and are stopped when their run ends.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from servers import free_port, running

RESULTS = Path(__file__).resolve().parent / "results" / "evals"
PATHS = ("inprocess", "serve", "llama-server")
QWENKIT = [sys.executable, "-c", "from qwenkit.cli import main; main()"]


def run(path: str, model_file: Path, out: Path, args: argparse.Namespace) -> None:
    common = ["eval", "humaneval", "--out", str(out), "--concurrency", str(args.parallel), "--json"]
    common += ["--limit", str(args.limit)] if args.limit else []
    threads = str(args.threads)
    if path == "inprocess":
        subprocess.run([*QWENKIT, *common, "--model", str(model_file), "--threads", threads], check=True)
        return
    port = free_port()
    if path == "serve":
        cmd = [*QWENKIT, "serve", "--model", str(model_file), "--host", "127.0.0.1", "--port", str(port)]
        cmd += ["--parallel", str(args.parallel), "--threads", threads]
    else:
        from qwenkit.engines.llamacpp import vendor

        binary = vendor.tool("llama-server")
        if binary is None:
            raise SystemExit("llama-server could not be built here (see the message above)")
        cmd = [str(binary), "-m", str(model_file), "--host", "127.0.0.1", "--port", str(port), "--jinja"]
        cmd += ["-np", str(args.parallel), "-c", str(8192 * args.parallel), "-t", threads]
    with running(cmd, port, out.parent / f"{path}.server.log", ready_timeout_s=600) as (url, _pid):
        subprocess.run([*QWENKIT, *common, "--url", url, "--model-file", str(model_file)], check=True)


def report(model: str, first: int = 20) -> str:
    """Markdown rows from the result files: pass@1 overall and on the first `first` problems (which
    every path, a shorter `--limit` run too, has answered), beside the published number."""
    head = f"| path | engine | problems | pass@1 | pass@1, first {first} | published | difference | hit max_tokens |"
    rows = [head, "|---|---|---|---|---|---|---|---|"]
    for path in (*PATHS, "transformers"):
        run_dir = RESULTS / model / path
        if not (run_dir / "run.json").exists():
            continue
        data = json.loads((run_dir / "run.json").read_text())
        summary, settings = data["summary"] or {}, data["settings"]
        metrics, published = summary.get("metrics", {}), summary.get("published") or {}
        records = [json.loads(line) for line in (run_dir / "problems.jsonl").read_text().splitlines()]
        ids = {f"HumanEval/{i}" for i in range(first)}
        head_score = 100 * sum(r["correct"] for r in records if r["id"] in ids) / first
        difference = "-" if published.get("difference") is None else published["difference"]
        engine = settings["engine"] if settings["backend"] == "in-process" else "OpenAI-compatible HTTP"
        rows.append(
            f"| {path} | {engine} | {metrics.get('problems', '-')} | {metrics.get('pass@1', '-')} | {head_score:.1f} | "
            f"{published.get('value', '-')} | {difference} | "
            f"{summary.get('finish_reasons', {}).get('length', 0)} |"
        )
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="default")
    parser.add_argument("--limit", type=int)
    parser.add_argument("--parallel", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--only", default=",".join(PATHS))
    parser.add_argument("--report", action="store_true")
    args = parser.parse_args()
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    from qwenkit import store

    local = store.resolve(args.model)
    if args.report:
        print(report(local.name))
        return
    for path in args.only.split(","):
        out = RESULTS / local.name / path
        out.parent.mkdir(parents=True, exist_ok=True)
        print(f"== {path}", file=sys.stderr)
        run(path, local.path, out, args)
    print(report(local.name))


if __name__ == "__main__":
    main()
