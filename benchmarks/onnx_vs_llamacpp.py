"""ONNX Runtime GenAI (int4, `qwenkit export onnx`) vs llama.cpp (Q4_K_M) on the same model, in one run.

Each engine runs in a child process of its own (so its peak memory is its own), both loaded at
once; the parent gives them work in turns, alternating which goes first each round, so that a
machine busy with other work slows both alike. Per round:

- decode tok/s: 128 new tokens, greedy, end-of-turn ids suppressed, timed after the first token;
- time to first token of a short chat prompt (~40 tokens);
- prefill tok/s: a ~600-token prompt with max_tokens=1, prompt tokens / time to the first token.

Every prompt starts with a round-unique line, so llama.cpp's prefix cache never serves one.
Medians over the rounds are reported, with the load average before and after. Conversion:
the export's own record (builder seconds and peak memory, `qwenkit-onnx.json`), and with
`--fresh-export` a timed export into a temporary directory. Agreement (after the speed rounds,
one engine at a time): the int4 model's greedy choice at every position of the fp32 transformers
model's greedy continuation (teacher-forced top-1 agreement), and for both engines the length
of the greedy output identical to transformers' before the first difference. Usage:

    .venv/bin/python benchmarks/onnx_vs_llamacpp.py [--model default] [--threads 1] [--rounds 5] [--fresh-export]

Results: `benchmarks/results/onnx_vs_llamacpp-<threads>thread.json`.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import multiprocessing as mp
import os
import platform
import resource
import statistics
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

# llama.cpp's OpenMP threads spin while they wait; on a machine shared with other work that
# starves them (the test suite sets the same). Children inherit it.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

CHAT = (
    "<|im_start|>system\n{tag}You are a helpful assistant.<|im_end|>\n"
    "<|im_start|>user\n{q}<|im_end|>\n<|im_start|>assistant\n"
)
DECODE_Q = "Write a long, detailed story about a lighthouse keeper who finds a map."
SHORT_Q = "What is a Python list comprehension?"
CODE = '''def merge_sorted(a: list[int], b: list[int]) -> list[int]:
    """Merge two sorted lists into one sorted list."""
    out, i, j = [], 0, 0
    while i < len(a) and j < len(b):
        if a[i] <= b[j]:
            out.append(a[i]); i += 1
        else:
            out.append(b[j]); j += 1
    return out + a[i:] + b[j:]
'''
AGREEMENT_PROMPTS = [
    "Write a Python function that checks whether a string is a palindrome.",
    "Explain what a hash map is in two sentences.",
    "Write a SQL query that returns the ten most recent orders.",
    "Write a bash one-liner that counts the lines of all .py files.",
    "What does the `yield` keyword do in Python?",
    "Write a JavaScript function that debounces another function.",
    "Write a Rust function that reverses a vector in place.",
    "Give three tips for writing readable code.",
]


def _engine(kind: str, path: str, threads: int) -> Any:
    if kind == "llamacpp":
        from qwenkit.engines.llamacpp import LlamaCppEngine, LlamaCppSettings

        return LlamaCppEngine(path, LlamaCppSettings(n_ctx=2048, n_threads=threads))
    from qwenkit.engines.onnx import OnnxEngine, OnnxSettings

    return OnnxEngine(path, OnnxSettings(n_ctx=2048, n_threads=threads))


def _time(engine: Any, text: str, tokens: int) -> dict[str, float]:
    """Stream up to `tokens` greedy tokens from `text`: TTFT, prefill and decode tok/s.

    No logit bias keeps the end of turn away: on the onnx engine a bias takes the
    get_logits/set_logits path that plain decoding does not; the story prompt runs long anyway."""
    from qwenkit.engines.base import SamplingParams

    prompt = engine.tokenize(text)
    params = SamplingParams(max_tokens=tokens, temperature=0.0)
    start = time.perf_counter()
    stamps = [time.perf_counter() for chunk in engine.generate(prompt, params) if chunk.token_ids]
    n = len(stamps) - 1
    ttft = stamps[0] - start
    return {
        "prompt_tokens": len(prompt),
        "ttft_s": ttft,
        "prefill_tps": len(prompt) / ttft,
        "decode_tps": n / (stamps[-1] - stamps[0]) if n > 0 else 0.0,
        "decoded": n + 1,
    }


def _greedy(engine: Any, text: str, tokens: int) -> list[int]:
    from qwenkit.engines.base import SamplingParams

    params = SamplingParams(max_tokens=tokens, temperature=0.0)
    return [t for chunk in engine.generate(engine.tokenize(text), params) for t in chunk.token_ids]


def _worker(kind: str, path: str, threads: int, conn: Any) -> None:
    """A child process holding one engine, answering the parent's commands until "stop"."""
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    engine = _engine(kind, path, threads)
    conn.send({"load_s": time.perf_counter() - t0, "rss_before_load_mib": before / 1024})
    while True:
        command, args = conn.recv()
        if command == "stop":
            engine.close()
            conn.send({"peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024})
            return
        if command == "time":
            conn.send(_time(engine, *args))
        elif command == "greedy":
            conn.send(_greedy(engine, *args))


class Child:
    def __init__(self, kind: str, path: Path, threads: int) -> None:
        ctx = mp.get_context("spawn")
        self.conn, theirs = ctx.Pipe()
        self.proc = ctx.Process(target=_worker, args=(kind, str(path), threads, theirs), daemon=True)
        self.proc.start()
        self.info = self.conn.recv()

    def ask(self, command: str, *args: Any) -> Any:
        self.conn.send((command, args))
        return self.conn.recv()

    def stop(self) -> dict[str, float]:
        info = self.ask("stop")
        self.proc.join(timeout=60)
        return info


def _prompts() -> dict[str, str]:
    """This round's prompts, each opening with a tag of its own (no prefix shared with any other)."""
    long_q = "Review this code and suggest improvements:\n" + "\n".join([CODE] * 6)
    questions = {"decode": DECODE_Q, "short": SHORT_Q, "long": long_q}
    return {kind: CHAT.format(tag=f"Session {uuid.uuid4().hex[:8]}. ", q=q) for kind, q in questions.items()}


def _speed(children: dict[str, Child], rounds: int, tokens: int) -> dict[str, Any]:
    runs: dict[str, dict[str, list[float]]] = {n: {"decode": [], "ttft": [], "prefill": []} for n in children}
    names = list(children)
    for name in names:  # warm-up
        children[name].ask("time", _prompts()["short"], 4)
    for r in range(rounds):
        order = names if r % 2 == 0 else names[::-1]
        prompts = _prompts()
        for name in order:
            child = children[name]
            decode = child.ask("time", prompts["decode"], tokens)
            runs[name]["decode"].append(decode["decode_tps"])
            runs[name]["decoded_tokens"] = [*runs[name].get("decoded_tokens", []), decode["decoded"]]
            runs[name]["ttft"].append(child.ask("time", prompts["short"], 1)["ttft_s"])
            long = child.ask("time", prompts["long"], 1)
            runs[name]["prefill"].append(long["prefill_tps"])
            runs[name]["long_prompt_tokens"] = [long["prompt_tokens"]]
        print(
            f"round {r + 1}: "
            + ", ".join(f"{n} decode {runs[n]['decode'][-1]:.1f} prefill {runs[n]['prefill'][-1]:.0f}" for n in names),
            flush=True,
        )
    return runs


def _agreement(onnx_dir: Path, checkpoint: Path, llama: Child, onnx: Child, threads: int, tokens: int) -> dict:
    """int4 ONNX (and llama.cpp) greedy choices against the fp32 transformers model's."""
    import numpy as np
    import onnxruntime_genai as og

    from qwenkit.engines.transformers import TransformersEngine, TransformersSettings

    hf = TransformersEngine(checkpoint, TransformersSettings(n_ctx=2048, n_parallel=1, n_threads=threads))
    texts = [CHAT.format(tag="", q=q) for q in AGREEMENT_PROMPTS]
    references = [(hf.tokenize(t), _greedy(hf, t, tokens)) for t in texts]
    hf.close()
    del hf
    config = og.Config(str(onnx_dir))
    config.clear_providers()
    model = og.Model(config)
    agree = total = 0
    for prompt, reference in references:
        params = og.GeneratorParams(model)
        params.set_search_options(max_length=len(prompt) + len(reference) + 1, do_sample=False)
        generator = og.Generator(model, params)
        generator.append_tokens(np.asarray(prompt, dtype=np.int32))
        for token in reference:
            agree += int(np.asarray(generator.get_logits()).reshape(-1).argmax()) == token
            total += 1
            generator.append_tokens(np.asarray([token], dtype=np.int32))

    def prefix(a: list[int], b: list[int]) -> int:
        return next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))

    same = {
        name: [prefix(child.ask("greedy", t, tokens), ref) for t, (_, ref) in zip(texts, references, strict=True)]
        for name, child in (("onnx_int4", onnx), ("llamacpp_q4_k_m", llama))
    }
    return {
        "reference": f"transformers fp32 greedy, {tokens} tokens, {len(texts)} chat prompts",
        "onnx_int4_teacher_forced_top1": agree / total,
        "greedy_identical_prefix_mean_tokens": {n: statistics.mean(v) for n, v in same.items()},
        "greedy_identical_whole_outputs": {n: sum(x >= tokens for x in v) for n, v in same.items()},
        "greedy_identical_prefix_per_prompt": same,
    }


def _fresh_export(source: Path) -> dict[str, float]:
    from qwenkit.engines.onnx import export_onnx

    with tempfile.TemporaryDirectory(dir=source.parent if source.is_dir() else None) as tmp:
        t0 = time.perf_counter()
        out = export_onnx(source, "int4", out=Path(tmp) / "int4")
        seconds = time.perf_counter() - t0
        stamp = json.loads((out / "qwenkit-onnx.json").read_text())
    return {"export_s_from_cached_checkpoint": round(seconds, 1), "builder_peak_rss_mib": stamp["builder_peak_rss_mib"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="default")
    parser.add_argument("--threads", type=int, default=1, help="threads per engine (2 collapses ORT on a busy machine)")
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--agreement-tokens", type=int, default=48)
    parser.add_argument("--no-agreement", action="store_true", help="speed only (agreement does not depend on threads)")
    parser.add_argument("--fresh-export", action="store_true", help="also time an export into a temp directory")
    args = parser.parse_args()

    from qwenkit import store
    from qwenkit.engines.onnx import export_onnx

    local = store.resolve(args.model)
    if local.format != "gguf":
        raise SystemExit("this benchmark compares the engines on a GGUF model")
    onnx_dir = export_onnx(local.path, "int4")  # cached: see its record below for the conversion cost
    record = json.loads((onnx_dir / "qwenkit-onnx.json").read_text())
    load_before = os.getloadavg()
    children = {"llamacpp_q4_k_m": Child("llamacpp", local.path, args.threads)}
    children["onnx_int4"] = Child("onnx", onnx_dir, args.threads)
    runs = _speed(children, args.rounds, args.tokens)
    load_after = os.getloadavg()
    agreement = None
    if not args.no_agreement:
        agreement = _agreement(
            onnx_dir,
            Path(record["checkpoint"]),
            children["llamacpp_q4_k_m"],
            children["onnx_int4"],
            args.threads,
            args.agreement_tokens,
        )
    memory = {name: {**child.info, **child.stop()} for name, child in children.items()}

    def size(path: Path) -> float:
        files = [path] if path.is_file() else [p for p in path.iterdir() if p.is_file()]
        return round(sum(f.stat().st_size for f in files) / 2**20, 1)

    median = {n: {k: statistics.median(r[k]) for k in ("decode", "ttft", "prefill")} for n, r in runs.items()}
    result: dict[str, Any] = {
        "measured_at": time.strftime("%Y-%m-%d", time.gmtime()),
        "onnxruntime_genai": importlib.metadata.version("onnxruntime-genai"),
        "model": local.name,
        "threads": args.threads,
        "rounds": args.rounds,
        "decode_tokens": args.tokens,
        "long_prompt_tokens": runs["onnx_int4"]["long_prompt_tokens"][0],
        "median": median,
        "onnx_over_llamacpp": {
            k: median["onnx_int4"][k] / median["llamacpp_q4_k_m"][k] for k in ("decode", "prefill", "ttft")
        },
        "all_rounds": runs,
        "memory_and_load": memory,
        "size_mib": {"llamacpp_q4_k_m": size(local.path), "onnx_int4": size(onnx_dir)},
        "conversion": {
            "llamacpp_q4_k_m": "none: the GGUF is published quantized",
            "onnx_int4_builder_s": record["builder_seconds"],
            "onnx_int4_builder_peak_rss_mib": record["builder_peak_rss_mib"],
            "onnx_int4_from": "the dequantized fp32 checkpoint (transformers engine's cached conversion)",
        },
        "agreement": agreement,
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "loadavg_before": [round(x, 2) for x in load_before],
            "loadavg_after": [round(x, 2) for x in load_after],
            "shared": "other work ran on the machine during the run; only the side-by-side ratios are meaningful",
        },
    }
    if args.fresh_export:
        result["conversion"]["fresh"] = _fresh_export(Path(record["checkpoint"]))
    out = Path(__file__).parent / "results"
    out.mkdir(exist_ok=True)
    (out / f"onnx_vs_llamacpp-{args.threads}thread.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: result[k] for k in ("median", "onnx_over_llamacpp", "size_mib", "agreement")}, indent=2))


if __name__ == "__main__":
    main()
