"""A bounded load test of `qwenkit serve`: many requests, many at once, some cancelled midway.

The load is one `qwenkit loadtest` level (`qwenkit.bench.loadtest.run_level`): streamed
requests, a share of them cancelled by the client after a few chunks. Passes when every request
either completed, was cancelled by the client or was cleanly refused (429/503), the server is
healthy afterwards, and its memory is back near where it started. Usage:

    .venv/bin/python benchmarks/load_test.py [--model default] [--requests 200] [--concurrency 32]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from servers import free_port, qwenkit_cmd, running

from qwenkit.bench.loadtest import LoadConfig, run_level

ACCEPTABLE = {"http_429", "http_503"}  # refusals with Retry-After: the server protecting itself


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def load(base: str, requests: int, concurrency: int, cancel_fraction: float, max_tokens: int) -> dict:
    prompts = tuple(f"Request {i}: count from 1 to 50." for i in range(requests))
    config = LoadConfig(
        urls=(base,),
        concurrency=(concurrency,),
        requests=requests,
        duration_s=3600,  # bounded by the count: every request is sent
        max_tokens=max_tokens,
        prompts=prompts,
        stream=True,
        cancel_fraction=cancel_fraction,
        temperature=0.7,
    )
    return asyncio.run(run_level(f"{base}/v1", "m", concurrency, config, lambda _: None))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="default")
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--cancel-fraction", type=float, default=0.2)
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--parallel", type=int, default=8)
    parser.add_argument("--max-queue", type=int, default=32, help="server wait queue; beyond it: 429")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    args = parser.parse_args()

    from qwenkit import store

    path = store.resolve(args.model).path
    port = free_port()
    cmd = [
        *qwenkit_cmd(str(path), port, parallel=args.parallel, threads=args.threads, ctx=2048),
        "--max-queue",
        str(args.max_queue),
    ]
    log = Path(os.environ.get("TMPDIR", "/tmp")) / "qwenkit-load-test.log"
    load_before = os.getloadavg()
    with running(cmd, port, log) as (base, pid):
        load(base, args.parallel, args.parallel, 0.0, args.max_tokens)  # warm-up: every slot used once
        before = rss_mib(pid)
        level = load(base, args.requests, args.concurrency, args.cancel_fraction, args.max_tokens)
        time.sleep(1.0)
        healthy = httpx.get(f"{base}/health").status_code == 200
        after = rss_mib(pid)
    report = {
        "requests": args.requests,
        "concurrency": args.concurrency,
        "parallel": args.parallel,
        "max_queue": args.max_queue,
        "cancel_fraction": args.cancel_fraction,
        "max_tokens": args.max_tokens,
        "threads": args.threads,
        "measured_at": time.strftime("%Y-%m-%d", time.gmtime()),
        "loadavg_before": [round(x, 2) for x in load_before],
        "loadavg_after": [round(x, 2) for x in os.getloadavg()],
        "level": level,
        "healthy_after": healthy,
        "rss_mib_before": round(before, 1),
        "rss_mib_after": round(after, 1),
    }
    accounted = level["completed"] + level["cancelled_by_client"] + sum(level["errors"].values())
    report["passed"] = (
        set(level["errors"]) <= ACCEPTABLE and accounted == args.requests and healthy and after <= before * 1.10 + 32
    )
    out = Path(__file__).parent / "results"
    out.mkdir(exist_ok=True)
    (out / "load_test.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    sys.exit(0 if report["passed"] else 1)


if __name__ == "__main__":
    main()
