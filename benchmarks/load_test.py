"""A bounded load test of `qwenkit serve`: many requests, many at once, some cancelled midway.

Passes when every request either completed or was cleanly rejected (429/503 with Retry-After),
no response was a 5xx, the server is healthy afterwards, and its memory is back near where it
started. Usage:

    .venv/bin/python benchmarks/load_test.py [--model default] [--requests 200] [--concurrency 32]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import sys
import time
from collections import Counter
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from servers import free_port, qwenkit_cmd, running


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


async def _request(client: httpx.AsyncClient, i: int, cancel: bool, max_tokens: int, outcomes: Counter) -> None:
    body = {
        "messages": [{"role": "user", "content": f"Request {i}: count from 1 to 50."}],
        "max_tokens": max_tokens,
        "stream": True,
        "temperature": 0.7,
        "seed": i,
    }
    try:
        async with client.stream("POST", "/v1/chat/completions", json=body) as response:
            if response.status_code != 200:
                await response.aread()
                kind = "rejected" if response.status_code in (429, 503) and "retry-after" in response.headers else "bad"
                outcomes[f"{kind}_{response.status_code}"] += 1
                return
            events = 0
            async for line in response.aiter_lines():
                if not line.startswith("data: "):
                    continue
                if line == "data: [DONE]":
                    outcomes["completed"] += 1
                    return
                if '"error"' in line:
                    outcomes["stream_error"] += 1
                    return
                events += 1
                if cancel and events >= 3:
                    outcomes["cancelled"] += 1
                    return  # leaving the block closes the connection mid-stream
            outcomes["truncated"] += 1
    except httpx.HTTPError as exc:
        outcomes[f"transport_{type(exc).__name__}"] += 1


async def load(base: str, requests: int, concurrency: int, cancel_share: float, max_tokens: int) -> Counter:
    outcomes: Counter = Counter()
    gate = asyncio.Semaphore(concurrency)
    rng = random.Random(0)
    async with httpx.AsyncClient(base_url=base, timeout=httpx.Timeout(300, connect=10)) as client:

        async def one(i: int) -> None:
            async with gate:
                await _request(client, i, rng.random() < cancel_share, max_tokens, outcomes)

        await asyncio.gather(*(one(i) for i in range(requests)))
    return outcomes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="default")
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--cancel-share", type=float, default=0.2)
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
    with running(cmd, port, log) as (base, pid):
        asyncio.run(load(base, 8, 8, 0.0, args.max_tokens))  # warm-up: every slot used once
        before = rss_mib(pid)
        started = time.perf_counter()
        outcomes = asyncio.run(load(base, args.requests, args.concurrency, args.cancel_share, args.max_tokens))
        elapsed = time.perf_counter() - started
        time.sleep(1.0)
        healthy = httpx.get(f"{base}/health").status_code == 200
        after = rss_mib(pid)
    ok_kinds = {"completed", "cancelled", "rejected_429", "rejected_503"}
    report = {
        "requests": args.requests,
        "concurrency": args.concurrency,
        "elapsed_s": round(elapsed, 1),
        "outcomes": dict(outcomes),
        "healthy_after": healthy,
        "rss_mib_before": round(before, 1),
        "rss_mib_after": round(after, 1),
    }
    report["passed"] = (
        set(outcomes) <= ok_kinds
        and sum(outcomes.values()) == args.requests
        and healthy
        and after <= before * 1.10 + 32
    )
    print(json.dumps(report, indent=2))
    sys.exit(0 if report["passed"] else 1)


if __name__ == "__main__":
    main()
