"""Serving throughput: `qwenkit serve` against llama.cpp's `llama-server`, same load, one run.

For 1, 4 and 8 concurrent clients (each sending the same prompts, 128 new tokens, greedy) it
measures aggregate generated tokens/s on both servers (both up, taking turns wave by wave)
and the ratio. It also measures time to first token for a request whose ~1,000-token system
prompt is already cached against the same request uncached. Usage:

    .venv/bin/python benchmarks/serve_load.py [--model default] [--threads 2] [--clients 1,4,8]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
import time
from pathlib import Path

from openai import AsyncOpenAI

sys.path.insert(0, str(Path(__file__).resolve().parent))
from servers import free_port, llama_server_cmd, qwenkit_cmd, running

from qwenkit.engines.llamacpp.vendor import tool, work_dir

PROMPTS = [
    "Write a detailed essay on the history of the printing press.",
    "Explain, step by step, how a compiler turns source code into machine code.",
    "Describe a walk through a busy market in a city of your choice, in detail.",
    "Write a long story about a robot that learns to paint.",
    "Explain the water cycle to a ten year old, with many examples.",
    "Write a tutorial on sorting algorithms with Python examples.",
    "Describe the life of a lighthouse keeper over one year.",
    "Write a detailed guide to planting a vegetable garden.",
]
NEW_TOKENS = 128


async def _one(client: AsyncOpenAI, prompt: str) -> int:
    r = await client.chat.completions.create(
        model="m",
        messages=[{"role": "user", "content": prompt}],
        max_tokens=NEW_TOKENS,
        temperature=0,
        seed=1,
    )
    return r.usage.completion_tokens


async def wave(base: str, prompts: list[str]) -> tuple[int, float]:
    """Send `prompts` at once; (completion tokens, seconds until the last finished)."""
    client = AsyncOpenAI(base_url=f"{base}/v1", api_key="none", max_retries=0, timeout=600)
    started = time.perf_counter()
    tokens = sum(await asyncio.gather(*(_one(client, p) for p in prompts)))
    elapsed = time.perf_counter() - started
    await client.close()
    return tokens, elapsed


def throughput(bases: dict[str, str], clients: int, rounds: int) -> dict:
    """Aggregate completion tokens/s per server with `clients` requests in flight.

    The servers take turns wave by wave, in ABBA order (A B, B A, A B, ...), so drift in the
    machine's speed falls on both alike. Each round's own tokens/s are kept too, to show the
    spread.
    """
    totals = {name: [0, 0.0] for name in bases}
    per_round: dict[str, list[float]] = {name: [] for name in bases}
    for base in bases.values():
        asyncio.run(wave(base, ["Say hi."]))  # warm-up
    for r in range(rounds):
        prompts = [PROMPTS[(r * clients + i) % len(PROMPTS)] for i in range(clients)]
        order = list(bases.items())
        for name, base in order if r % 2 == 0 else reversed(order):
            tokens, elapsed = asyncio.run(wave(base, prompts))
            totals[name][0] += tokens
            totals[name][1] += elapsed
            per_round[name].append(round(tokens / elapsed, 2))
    result: dict = {f"{name}_tps": tokens / elapsed for name, (tokens, elapsed) in totals.items()}
    result.update({f"{name}_rounds_tps": tps for name, tps in per_round.items()})
    return result


async def ttft(base: str, system: str, question: str) -> float:
    client = AsyncOpenAI(base_url=f"{base}/v1", api_key="none", max_retries=0, timeout=600)
    started = time.perf_counter()
    stream = await client.chat.completions.create(
        model="m",
        stream=True,
        max_tokens=4,
        temperature=0,
        messages=[{"role": "system", "content": system}, {"role": "user", "content": question}],
    )
    first = None
    async for chunk in stream:
        if first is None and chunk.choices and chunk.choices[0].delta.content:
            first = time.perf_counter() - started
    await client.close()
    return first if first is not None else time.perf_counter() - started


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
    parser.add_argument("--rounds", type=int, default=4)
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
    out = Path(__file__).parent / "results"
    out.mkdir(exist_ok=True)
    (out / "serve_load.json").write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
