"""Follow-up turns on a hybrid model: prefilled tokens and TTFT, qwenkit beside llama-server.

A 5-turn thinking conversation in Qwen3.5's format (the prompt opens `<think>`, the history keeps
each answer without its reasoning, as the template renders it) on the tiny random Qwen3.5 f32
GGUF, sent as raw `/v1/completions` prompts to `qwenkit serve` and to the vendored llama-server
(`--ctx-checkpoints 8`) in turn, one slot each. Per turn: the tokens each server prefilled
(prompt minus reused), and the time to the first token (a 1-token completion's latency), for
the turn as it comes ("cached") and for the same prompt behind a unique first line that no
cache holds ("uncached"). Medians over rounds go to `benchmarks/results/hybrid_followup.json`.

    .venv/bin/python benchmarks/hybrid_followup.py [--threads 2] [--rounds 3] [--system-words 300]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import httpx
from servers import free_port, llama_server_cmd, qwenkit_cmd, running

HERE = Path(__file__).resolve().parent
TURNS = 5


def conversation(system_words: int) -> list[str]:
    """The prompt of each turn (Qwen3.5's rendering: earlier answers without reasoning)."""
    system = "<|im_start|>system\n" + " ".join(f"rule{i}" for i in range(system_words)) + "<|im_end|>\n"
    history, prompts = system, []
    for turn in range(TURNS):
        history += f"<|im_start|>user\nQuestion {turn + 1}: what follows from rule{turn}?<|im_end|>\n"
        prompts.append(history + "<|im_start|>assistant\n<think>\n")
        history += f"<|im_start|>assistant\nAnswer {turn + 1}: it follows from rule{turn}.<|im_end|>\n"
    return prompts


def complete(client: httpx.Client, base: str, prompt: str) -> tuple[float, int, int]:
    """(seconds, prompt tokens, prefilled tokens) of a 1-token greedy completion."""
    t0 = time.perf_counter()
    r = client.post(f"{base}/v1/completions", json={"prompt": prompt, "max_tokens": 1, "temperature": 0.0})
    seconds = time.perf_counter() - t0
    r.raise_for_status()
    body = r.json()
    usage = body.get("usage") or {}
    prompt_tokens = usage.get("prompt_tokens", 0)
    timings = body.get("timings")
    if timings is not None:  # llama-server: the tokens it processed
        return seconds, prompt_tokens, int(timings["prompt_n"])
    cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens", 0)
    return seconds, prompt_tokens, prompt_tokens - cached


def measure(base: str, prompts: list[str]) -> list[dict[str, float]]:
    rows = []
    with httpx.Client(timeout=120) as client:
        for prompt in prompts:
            cached_s, n, prefilled = complete(client, base, prompt)
            uncached_s, _, uncached_prefilled = complete(client, base, f"{uuid.uuid4()}\n{prompt}")
            rows.append(
                dict(
                    prompt_tokens=n,
                    prefilled=prefilled,
                    ttft_ms=cached_s * 1000,
                    uncached_prefilled=uncached_prefilled,
                    uncached_ttft_ms=uncached_s * 1000,
                )
            )
            complete(client, base, prompt)  # the conversation's slot holds this turn again
    return rows


def median_rows(rounds: list[list[dict[str, float]]]) -> list[dict[str, float]]:
    return [{k: statistics.median(r[t][k] for r in rounds) for k in rounds[0][t]} for t in range(len(rounds[0]))]


def main() -> None:
    from qwenkit.engines.llamacpp import vendor
    from qwenkit.store import home
    from qwenkit.testing.tiny_hybrid import tiny_hybrid_gguf

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--system-words", type=int, default=300)
    args = ap.parse_args()
    model = tiny_hybrid_gguf("qwen35", home() / "test-fixtures")
    prompts = conversation(args.system_words)
    logs = home() / "llama.cpp" / "bench-logs"
    logs.mkdir(parents=True, exist_ok=True)
    servers: dict[str, Callable[[int], list[str]]] = {
        "qwenkit": lambda port: qwenkit_cmd(str(model), port, parallel=1, threads=args.threads, ctx=4096)
    }
    binary = vendor.tool("llama-server")
    if binary is not None:
        servers["llama-server"] = lambda port: [
            *llama_server_cmd(binary, model, port, parallel=1, threads=args.threads, ctx=4096),
            *("--ctx-checkpoints", "8"),
        ]
    rounds: dict[str, list[list[dict[str, float]]]] = {name: [] for name in servers}
    for _ in range(args.rounds):  # servers alternate, each round on a fresh server
        for name, command in servers.items():
            port = free_port()
            with running(command(port), port, logs / f"hybrid-{name}.log") as (base, _):
                rounds[name].append(measure(base, prompts))
    out = {
        "model": "tiny random Qwen3.5 (4 layers: 3 gated DeltaNet, 1 full attention; f32 GGUF)",
        "threads": args.threads,
        "rounds": args.rounds,
        "machine": platform.processor() or platform.machine(),
        "turns": {name: median_rows(r) for name, r in rounds.items()},
    }
    path = HERE / "results" / "hybrid_followup.json"
    path.write_text(json.dumps(out, indent=1) + "\n")
    print(json.dumps(out["turns"], indent=1))


if __name__ == "__main__":
    main()
