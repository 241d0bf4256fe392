"""qwenkit on Ray Serve, one machine: aggregate tokens/s with 1 and 2 replicas, and time to first
token of follow-up turns (sent one at a time) with the prefix-aware router against Ray's default router.

Each configuration is deployed in turn on one local Ray instance bound to 127.0.0.1 (all four
share the run, so the ratios are side by side). Re-run on a quiet machine:

    python benchmarks/ray_scaleout.py --model default --conversations 8 --out benchmarks/results/ray_scaleout.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # Ray on 127.0.0.1 (read at import)
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

import httpx
import ray
from ray import serve

from qwenkit.serve.cluster.app import build_app

SYSTEM = "You are a careful assistant. " * 40  # a long shared system prompt: what a prefix cache saves


def _turn(base: str, messages: list[dict[str, str]], max_tokens: int) -> tuple[float, int, str]:
    """(time to first token, tokens generated, reply) of one streamed chat turn."""
    body = {
        "messages": messages,
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    started, first, reply, tokens = time.perf_counter(), None, "", 0
    with httpx.stream("POST", f"{base}/v1/chat/completions", json=body, timeout=600) as r:
        for line in r.iter_lines():
            if not line.startswith("data:") or line == "data: [DONE]":
                continue
            event = json.loads(line[5:])
            if event.get("usage"):
                tokens = event["usage"]["completion_tokens"]
            for choice in event.get("choices", []):
                if choice["delta"].get("content"):
                    first = first or time.perf_counter()
                    reply += choice["delta"]["content"]
    return (first or time.perf_counter()) - started, tokens, reply


def _run(base: str, conversations: int, max_tokens: int) -> dict[str, Any]:
    """First turns all at once (aggregate tokens/s), then the follow-ups one at a time (their TTFT
    is then prompt processing alone: a replica holding the conversation reuses its prefix)."""
    firsts = [
        [
            {"role": "system", "content": f"Conversation {i}. {SYSTEM}"},
            {"role": "user", "content": f"Write a short poem about the number {i}."},
        ]
        for i in range(conversations)
    ]
    started = time.perf_counter()
    with ThreadPoolExecutor(conversations) as pool:
        first = list(pool.map(lambda m: _turn(base, m, max_tokens), firsts))
    elapsed = time.perf_counter() - started
    follow_ups = [
        [*m, {"role": "assistant", "content": reply}, {"role": "user", "content": "Now shorter."}]
        for m, (_, _, reply) in zip(firsts, first, strict=True)
    ]
    second = [_turn(base, m, 1) for m in follow_ups]
    return {
        "tokens_per_s": sum(t for _, t, _ in first) / elapsed,
        "follow_up_ttft_median_s": statistics.median(t for t, _, _ in second),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="default")
    parser.add_argument("--conversations", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=48)
    parser.add_argument("--threads", type=int, default=1, help="llama.cpp threads per replica")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    ray.init(_node_ip_address="127.0.0.1", include_dashboard=False, num_cpus=2)
    port = 18765
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    base = f"http://127.0.0.1:{port}"
    configs = {
        "1 replica": (1, "prefix"),
        "2 replicas, default router": (2, "default"),
        "2 replicas, prefix router": (2, "prefix"),
    }
    results: dict[str, Any] = {}
    try:
        for name, (replicas, router) in configs.items():
            options = {
                "model": args.model,
                "replicas": replicas,
                "router": router,
                "threads": args.threads,
                "cpus_per_replica": 1,
                "parallel": 4,
                "ctx": 8192,
                "name": "bench",
            }
            serve.run(build_app(options), name="bench", route_prefix="/")
            _run(base, 2, 4)  # warm-up
            results[name] = _run(base, args.conversations, args.max_tokens)
            print(name, results[name], flush=True)
            serve.delete("bench")
            ray.kill(ray.get_actor("bench-state", namespace="qwenkit"))
    finally:
        serve.shutdown()
        ray.shutdown()
    if args.out:
        args.out.write_text(json.dumps({"args": vars(args) | {"out": str(args.out)}, "results": results}, indent=2))


if __name__ == "__main__":
    main()
