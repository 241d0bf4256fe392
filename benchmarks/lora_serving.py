"""Multi-LoRA serving on llama.cpp: aggregate decode speed of N concurrent requests when they all
run on the base model, all on one adapter, or split over two adapters (two decode groups a step).

One engine (`--parallel` slots), GGUF LoRAs loaded once; every request decodes `--tokens` tokens
(end-of-turn suppressed, greedy). Scenarios alternate within each round so that a machine busy
with other work slows all alike; medians go to `benchmarks/results/lora_serving.json`. Without
`--lora` files, two random rank-16 adapters are made for the model (peft, exported to GGUF). Usage:

    .venv/bin/python benchmarks/lora_serving.py [--model default] [--lora A.gguf --lora B.gguf] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import threading
import time
from pathlib import Path

# On a shared machine llama.cpp's spinning OpenMP workers starve each other: wait passively.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

PROMPT = (
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
    "Write a long, detailed story about a lighthouse keeper who finds a map.<|im_end|>\n<|im_start|>assistant\n"
)


def random_lora(model_path: Path, out: Path, seed: int) -> Path:
    """A random rank-16 all-linear LoRA for the model, as a GGUF LoRA."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from qwenkit.engines.transformers import convert_gguf
    from qwenkit.tune.export import export_lora

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(str(convert_gguf(model_path)), dtype=torch.float32)
    peft_model = get_peft_model(
        model, LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", init_lora_weights=False)
    )
    peft_model.save_pretrained(str(out / f"peft-{seed}"))
    return export_lora(out / f"peft-{seed}", out / f"lora-{seed}.gguf", model=str(model_path))


def aggregate_tps(engine, prompt: list[int], tokens: int, targets: list[tuple]) -> float:
    """Tokens per second over all requests, submitted together, one per adapter set in `targets`."""
    from qwenkit.engines.base import SamplingParams

    suppress = tuple((t, -1000.0) for t in sorted(engine.eos_token_ids()))
    params = SamplingParams(max_tokens=tokens, temperature=0.0, logit_bias=suppress)
    done = threading.Semaphore(0)
    counts = [0] * len(targets)

    def emitter(i: int):
        def emit(chunk) -> None:
            counts[i] += len(chunk.token_ids)
            if chunk.finish_reason is not None:
                done.release()

        return emit

    start = time.perf_counter()
    for i, adapters in enumerate(targets):
        engine.submit(prompt, params, emitter(i), None, adapters)
    for _ in targets:
        if not done.acquire(timeout=1800):
            raise SystemExit("a request did not finish in 30 minutes")
    return sum(counts) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="default")
    parser.add_argument("--lora", action="append", default=[], help="a GGUF LoRA (give two, or none)")
    parser.add_argument("--parallel", type=int, default=4)
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--tokens", type=int, default=48)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    from qwenkit import store
    from qwenkit.engines.llamacpp import LlamaCppEngine, LlamaCppSettings

    local = store.resolve(args.model)
    with tempfile.TemporaryDirectory(prefix="qwenkit-lora-bench-") as tmp:
        files = [Path(f) for f in args.lora] or [random_lora(local.path, Path(tmp), seed) for seed in (1, 2)]
        if len(files) != 2:
            raise SystemExit("give two --lora files, or none")
        engine = LlamaCppEngine(
            local.path, LlamaCppSettings(n_ctx=1024, n_parallel=args.parallel, n_threads=args.threads)
        )
        engine.load_adapter("a", files[0])
        engine.load_adapter("b", files[1])
    n = args.parallel
    half = n // 2
    scenarios = {
        "base": [()] * n,
        "one_adapter": [(("a", 1.0),)] * n,
        "two_adapters": [(("a", 1.0),)] * half + [(("b", 1.0),)] * (n - half),
    }
    prompt = engine.tokenize(PROMPT)
    aggregate_tps(engine, prompt, 4, scenarios["two_adapters"])  # warm-up, both adapters
    load_before = os.getloadavg()
    runs: dict[str, list[float]] = {name: [] for name in scenarios}
    for r in range(args.rounds):
        order = list(scenarios) if r % 2 == 0 else list(reversed(scenarios))
        for name in order:
            runs[name].append(aggregate_tps(engine, prompt, args.tokens, scenarios[name]))
        print(f"round {r + 1}: " + ", ".join(f"{k} {v[-1]:.1f} tok/s" for k, v in runs.items()), flush=True)
    engine.close()
    median = {name: statistics.median(v) for name, v in runs.items()}
    result = {
        "measured_at": time.strftime("%Y-%m-%d", time.gmtime()),
        "model": local.name,
        "adapters": [str(p) for p in args.lora] if args.lora else "two random rank-16 all-linear GGUF LoRAs (f32)",
        "parallel": n,
        "threads": args.threads,
        "decode_tokens_per_request": args.tokens,
        "rounds": args.rounds,
        "aggregate_tps": median,
        "one_adapter_over_base": median["one_adapter"] / median["base"],
        "two_adapters_over_one_adapter": median["two_adapters"] / median["one_adapter"],
        "all_rounds_tps": runs,
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "loadavg_before": [round(x, 2) for x in load_before],
            "loadavg_after": [round(x, 2) for x in os.getloadavg()],
        },
    }
    out = Path(__file__).parent / "results"
    out.mkdir(exist_ok=True)
    (out / "lora_serving.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
