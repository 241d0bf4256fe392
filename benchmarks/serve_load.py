"""Serving throughput: `qwenkit serve` against llama.cpp's `llama-server`, same load, one run.

For 1, 4 and 8 concurrent clients (each sending the same prompts, 128 new tokens, greedy) it
measures aggregate generated tokens/s on both servers (both up, taking turns wave by wave in
ABBA order) and the ratio; each wave is one `qwenkit loadtest` level of `clients` requests
(`qwenkit.bench.loadtest.run_level`). It also measures time to first token for a request whose
~1,000-token system prompt is already cached against the same request uncached. Usage:

    .venv/bin/python benchmarks/serve_load.py [--model default] [--threads 2] [--clients 1,4,8]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
from pathlib import Path
from typing import Any

from openai import AsyncOpenAI

sys.path.insert(0, str(Path(__file__).resolve().parent))
from servers import free_port, llama_server_cmd, qwenkit_cmd, running

from qwenkit.bench.loadtest import DEFAULT_PROMPTS, LoadConfig, one_request, run_level, served_model
from qwenkit.engines.llamacpp.vendor import tool, work_dir

NEW_TOKENS = 128


def wave(base: str, clients: int, first_prompt: int) -> dict[str, Any]:
    """`clients` requests at once (one loadtest level of exactly that many requests)."""
    prompts = tuple(DEFAULT_PROMPTS[(first_prompt + i) % len(DEFAULT_PROMPTS)] for i in range(clients))
    config = LoadConfig(urls=(base,), concurrency=(clients,), requests=clients, max_tokens=NEW_TOKENS, prompts=prompts)
    model = asyncio.run(served_model(f"{base}/v1", config))  # qwenkit answers 404 to a model it does not serve
    level = asyncio.run(run_level(f"{base}/v1", model, clients, config, lambda _: None))
    if level["errors"] or level["completed"] != clients:
        raise RuntimeError(f"a wave on {base} failed: {level['errors']}")
    return level


def throughput(bases: dict[str, str], clients: int, rounds: int) -> dict[str, Any]:
    """Aggregate completion tokens/s per server with `clients` requests in flight.

    The servers take turns wave by wave, in ABBA order (A B, B A, A B, ...), so drift in the
    machine's speed falls on both alike. Each wave's own tokens/s are kept too, to show the spread.
    """
    totals = {name: [0, 0.0] for name in bases}
    per_round: dict[str, list[float]] = {name: [] for name in bases}
    for base in bases.values():
        wave(base, 1, 0)  # warm-up
    for r in range(rounds):
        order = list(bases.items())
        for name, base in order if r % 2 == 0 else reversed(order):
            level = wave(base, clients, r * clients)
            totals[name][0] += level["generated_tokens"]
            totals[name][1] += level["wall_s"]
            per_round[name].append(round(level["tokens_per_s"], 2))
    result: dict[str, Any] = {f"{name}_tps": tokens / elapsed for name, (tokens, elapsed) in totals.items()}
    result.update({f"{name}_rounds_tps": tps for name, tps in per_round.items()})
    return result


async def ttft(base: str, system: str, question: str) -> float:
    """Seconds to the first streamed token of one request with `system` as its system prompt."""
    client = AsyncOpenAI(base_url=f"{base}/v1", api_key="none", max_retries=0, timeout=600)
    config = LoadConfig(urls=(base,), max_tokens=4, stream=True)
    try:
        model = await served_model(f"{base}/v1", config)  # qwenkit answers 404 to a model it does not serve
        outcome = await one_request(client, model, question, config, cancel=False, system=system)
    finally:
        await client.close()
    if outcome.ttft_s is None:
        raise RuntimeError(f"no first token from {base}: {outcome.kind}")
    return outcome.ttft_s


def long_system_prompt() -> str:
    rules = [f"Rule {i}: when asked about topic {i}, answer briefly and cite section {i}." for i in range(1, 60)]
    return "You are a careful assistant for an internal help desk.\n" + "\n".join(rules)


async def prefix_cache(base: str) -> dict[str, float]:
    system = long_system_prompt()
    cold = await ttft(base, system, "What is rule 3 about?")
    warm = await ttft(base, system, "What is rule 7 about?")
    return {"ttft_uncached_s": cold, "ttft_cached_s": warm, "cached_over_uncached": warm / cold}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="default")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--clients", default="1,4,8")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--ctx", type=int, default=4096)
    args = parser.parse_args()
    levels = [int(c) for c in args.clients.split(",")]
    parallel = max(levels)

    from qwenkit import store

    path = store.resolve(args.model).path
    binary = tool("llama-server")
    work = work_dir()
    work.mkdir(parents=True, exist_ok=True)
    results: dict = {"model": args.model, "threads": args.threads, "new_tokens": NEW_TOKENS, "levels": {}}
    results["machine"] = {"cpus": os.cpu_count(), "loadavg_before": [round(x, 2) for x in os.getloadavg()]}
    qport, lport = free_port(), free_port()
    q_cmd = qwenkit_cmd(str(path), qport, parallel=parallel, threads=args.threads, ctx=args.ctx)
    with contextlib.ExitStack() as stack:
        bases = {"qwenkit": stack.enter_context(running(q_cmd, qport, work / "qwenkit-serve.log"))[0]}
        if binary is not None:  # both stay up; only one is ever sent work at a time
            l_cmd = llama_server_cmd(binary, path, lport, parallel=parallel, threads=args.threads, ctx=args.ctx)
            bases["llama_server"] = stack.enter_context(running(l_cmd, lport, work / "llama-server.log"))[0]
        else:
            results["note"] = "llama-server unavailable: no ratio"
        for name, base in bases.items():
            results[f"{name}_prefix_cache"] = asyncio.run(prefix_cache(base))
            print(f"{name} prefix cache: {results[f'{name}_prefix_cache']}")
        for c in levels:
            level = throughput(bases, c, args.rounds)
            if "llama_server_tps" in level:
                level["ratio"] = level["qwenkit_tps"] / level["llama_server_tps"]
            results["levels"][c] = level
            print(
                f"{c} clients: " + ", ".join(f"{k} {v:.2f}" for k, v in level.items() if not k.endswith("rounds_tps"))
            )
    results["machine"]["loadavg_after"] = [round(x, 2) for x in os.getloadavg()]
    out = Path(__file__).parent / "results"
    out.mkdir(exist_ok=True)
    (out / "serve_load.json").write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
