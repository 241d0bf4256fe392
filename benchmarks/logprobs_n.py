"""What logprobs and n choices cost on llama.cpp, in one run, rounds interleaved.

Decode: single stream, greedy, end-of-turn suppressed so every round decodes the same tokens,
with logprobs off, with each token's logprob (`logprobs=0`) and with 20 alternatives
(`logprobs=20`); the off/on ratios are what matters. n: a long prompt sampled 3 ways (two
tokens each) as one `n=3` request (one prefill, the others copy its cache) against 3 separate
requests on fresh slots (three prefills). Rounds alternate the variants so
a machine busy with other work slows all alike; medians go to `benchmarks/results/logprobs_n.json`.

    .venv/bin/python benchmarks/logprobs_n.py [--model default] [--threads N] [--tokens 64] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import queue
import statistics
import time
from pathlib import Path

PROMPT = (
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
    "Write a long, detailed story about a lighthouse keeper who finds a map.<|im_end|>\n<|im_start|>assistant\n"
)


def decode_tps(engine, prompt: list[int], tokens: int, logprobs: int | None) -> float:
    from qwenkit.engines.base import SamplingParams

    suppress = tuple((t, -1000.0) for t in sorted(engine.eos_token_ids()))
    params = SamplingParams(max_tokens=tokens, temperature=0.0, logit_bias=suppress, logprobs=logprobs)
    stamps = [time.perf_counter() for chunk in engine.generate(prompt, params) if chunk.token_ids]
    return (len(stamps) - 1) / (stamps[-1] - stamps[0])


def choices_s(engine, prompt: list[int], n: int, together: bool) -> float:
    """Seconds until `n` two-token choices of `prompt` are done: one n=`n` request, or `n`
    requests submitted at once (admitted in one step, so none can copy another's prefill)."""
    from qwenkit.engines.base import SamplingParams

    params = SamplingParams(max_tokens=2, temperature=1.0)
    got: queue.Queue = queue.Queue()
    start = time.perf_counter()
    for _ in range(1 if together else n):
        engine.submit(prompt, params, got.put, n=n if together else 1)
    finished = 0
    while finished < n:
        finished += got.get(timeout=600).finish_reason is not None
    return time.perf_counter() - start


def logprob_cost_us(n_vocab: int) -> dict[str, float]:
    """Microseconds per token of the logprob computation alone (a vocabulary-sized row)."""
    import timeit

    import numpy as np

    from qwenkit.engines.logprobs import logprob_of

    row = np.random.default_rng(0).normal(size=n_vocab).astype(np.float32)
    return {
        f"logprobs={top}": min(timeit.repeat(lambda top=top: logprob_of(row, 7, top), number=200, repeat=5)) / 200 * 1e6
        for top in (0, 20)
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="default")
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--prompt-repeat", type=int, default=12, help="copies of the story request in the n prompt")
    args = parser.parse_args()

    from qwenkit import store
    from qwenkit.engines.llamacpp import LlamaCppEngine, LlamaCppSettings

    local = store.resolve(args.model)
    engine = LlamaCppEngine(local.path, LlamaCppSettings(n_ctx=4096, n_parallel=3, n_threads=args.threads))
    engine_vocab = engine.n_vocab
    prompt = engine.tokenize(PROMPT)
    long_prompt = engine.tokenize(PROMPT * args.prompt_repeat)
    variants = {"off": None, "logprobs=0": 0, "logprobs=20": 20}
    decode: dict[str, list[float]] = {k: [] for k in variants}
    choices: dict[str, list[float]] = {"n=3 request": [], "3 requests": []}
    try:
        decode_tps(engine, prompt, 8, None)  # warm-up
        for _ in range(args.rounds):
            for name, top in variants.items():
                decode[name].append(decode_tps(engine, prompt, args.tokens, top))
            for name in choices:
                for slot in engine.scheduler.slots:  # forget the last round's cache: every round prefills
                    slot.cached.clear()
                choices[name].append(choices_s(engine, long_prompt, 3, together=name == "n=3 request"))
    finally:
        engine.close()
    medians = {k: statistics.median(v) for k, v in decode.items()}
    per_token_us = logprob_cost_us(engine_vocab)
    result = {
        "model": local.name,
        "threads": args.threads,
        "tokens": args.tokens,
        "rounds": args.rounds,
        "load_average": os.getloadavg(),
        "machine": platform.platform(),
        "decode_tokens_per_s": medians,
        "decode_ratio_to_off": {k: v / medians["off"] for k, v in medians.items()},
        "logprob_cost_us_per_token": per_token_us,
        "logprob_cost_share_of_a_token": {k: v * 1e-6 * medians["off"] for k, v in per_token_us.items()},
        "prompt_tokens": len(long_prompt),
        "three_choices_s": {k: statistics.median(v) for k, v in choices.items()},
    }
    out = Path(__file__).with_name("results") / "logprobs_n.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
