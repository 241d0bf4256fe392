"""Does `qwenkit loadtest` measure what a plain client measures? The same load, two ways, one server.

One server (llama-server when it can be built, else `qwenkit serve`) gets the same closed-loop
load in turns: `qwenkit loadtest`'s level (the official `openai` client) and an independent
plain-Python client (httpx, its own timing and token counting from each reply's `usage`),
alternating ABBA round by round. Agreement within 10% on generated tokens/s and requests/s
(totals over all rounds) is the target. Usage:

    .venv/bin/python benchmarks/loadtest_crosscheck.py [--concurrency 4] [--requests 16] [--rounds 4]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from servers import free_port, llama_server_cmd, qwenkit_cmd, running

from qwenkit.bench.loadtest import DEFAULT_PROMPTS, LoadConfig, run_level
from qwenkit.engines.llamacpp.vendor import tool, work_dir


async def plain_client(base: str, concurrency: int, requests: int, max_tokens: int) -> dict[str, float]:
    """`concurrency` httpx workers send `requests` chat completions back to back; tokens/s and requests/s."""
    sent = [0]
    tokens = [0]
    done = [0]

    async def worker(http: httpx.AsyncClient) -> None:
        while sent[0] < requests:
            i = sent[0]
            sent[0] += 1
            body = {
                "model": "m",
                "messages": [{"role": "user", "content": DEFAULT_PROMPTS[i % len(DEFAULT_PROMPTS)]}],
                "max_tokens": max_tokens,
                "temperature": 0,
            }
            reply = await http.post("/v1/chat/completions", json=body)
            reply.raise_for_status()
            tokens[0] += reply.json()["usage"]["completion_tokens"]
            done[0] += 1

    async with httpx.AsyncClient(base_url=base, timeout=600) as http:
        started = time.perf_counter()
        await asyncio.gather(*(worker(http) for _ in range(concurrency)))
        wall = time.perf_counter() - started
    return {"tokens_per_s": tokens[0] / wall, "requests_per_s": done[0] / wall, "generated_tokens": tokens[0]}


def with_loadtest(base: str, concurrency: int, requests: int, max_tokens: int) -> dict[str, Any]:
    config = LoadConfig(urls=(base,), concurrency=(concurrency,), requests=requests, max_tokens=max_tokens)
    return asyncio.run(run_level(f"{base}/v1", "m", concurrency, config, lambda _: None))


def summarize(runs: dict[str, list[dict[str, float]]]) -> dict[str, Any]:
    """Each client's totals over all its rounds (all tokens over all seconds, as serve_load.py
    reads its waves: single rounds swing by a third on a busy machine), the medians of the rounds
    beside them, and the ratios loadtest / plain client."""
    out: dict[str, Any] = {}
    for who, rounds in runs.items():
        seconds = sum(r["generated_tokens"] / r["tokens_per_s"] for r in rounds)
        requests = sum(r["requests_per_s"] * r["generated_tokens"] / r["tokens_per_s"] for r in rounds)
        out[f"{who}_tokens_per_s"] = sum(r["generated_tokens"] for r in rounds) / seconds
        out[f"{who}_requests_per_s"] = requests / seconds
        out[f"{who}_median_round_tokens_per_s"] = statistics.median(r["tokens_per_s"] for r in rounds)
    for key in ("tokens_per_s", "requests_per_s", "median_round_tokens_per_s"):
        out[f"{key}_ratio"] = out[f"loadtest_{key}"] / out[f"plain_httpx_{key}"]
    out["within_10_percent"] = all(abs(out[f"{k}_ratio"] - 1) <= 0.10 for k in ("tokens_per_s", "requests_per_s"))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="default")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--requests", type=int, default=16)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--server", choices=("auto", "llama-server", "qwenkit"), default="auto")
    args = parser.parse_args()

    from qwenkit import store

    path = store.resolve(args.model).path
    binary = tool("llama-server") if args.server != "qwenkit" else None
    if args.server == "llama-server" and binary is None:
        raise SystemExit("llama-server could not be built here")
    port = free_port()
    if binary is not None:
        name = "llama-server"
        cmd = llama_server_cmd(binary, path, port, parallel=args.concurrency, threads=args.threads, ctx=1024)
    else:
        name = "qwenkit serve"
        cmd = qwenkit_cmd(str(path), port, parallel=args.concurrency, threads=args.threads, ctx=1024)
    work = work_dir()
    work.mkdir(parents=True, exist_ok=True)
    runs: dict[str, list[dict[str, float]]] = {"loadtest": [], "plain_httpx": []}
    load_before = os.getloadavg()
    with contextlib.ExitStack() as stack:
        base, _ = stack.enter_context(running(cmd, port, work / "crosscheck-server.log"))
        with_loadtest(base, 1, 1, 4)  # warm-up
        shape = (args.concurrency, args.requests, args.max_tokens)
        for r in range(args.rounds):
            order = ["loadtest", "plain_httpx"] if r % 2 == 0 else ["plain_httpx", "loadtest"]
            for who in order:
                if who == "loadtest":
                    level = with_loadtest(base, *shape)
                    if level["errors"]:
                        raise SystemExit(f"loadtest saw errors: {level['errors']}")
                    runs[who].append({k: level[k] for k in ("tokens_per_s", "requests_per_s", "generated_tokens")})
                else:
                    runs[who].append(asyncio.run(plain_client(base, *shape)))
                print(f"round {r + 1} {who}: {runs[who][-1]['tokens_per_s']:.2f} tok/s", flush=True)

    result: dict[str, Any] = {
        "server": name,
        "measured_at": time.strftime("%Y-%m-%d", time.gmtime()),
        "concurrency": args.concurrency,
        "requests_per_round": args.requests,
        "max_tokens": args.max_tokens,
        "rounds": args.rounds,
        "threads": args.threads,
        "runs": runs,
        "loadavg_before": [round(x, 2) for x in load_before],
        "loadavg_after": [round(x, 2) for x in os.getloadavg()],
    }
    result.update(summarize(runs))
    out = Path(__file__).parent / "results"
    out.mkdir(exist_ok=True)
    (out / "loadtest_crosscheck.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "runs"}, indent=2))


if __name__ == "__main__":
    main()
