"""Speculative decoding: qwenkit's prompt lookup against itself without it and against llama-server's
n-gram speculators, on the same GGUF and threads, greedy; and that it changes no output.

Workloads: the code-edit set (`qwenkit.bench.edits`: a 200-400 line standard-library module and
an instruction to rename one name in it; the answer copies the file), at 1 and 4 concurrent
streams; and text that repeats nothing (open-ended stories, random-token completions). Every
server is up at once and they take turns wave by wave, the order rotating each wave, so drift in the
machine's speed falls on all alike. qwenkit with and without speculation is one server (the
request's `"speculative": false` turns it off). Decode tokens/s of a wave: its generated tokens
after each stream's first, over the time from its first first token to its last token (prefill
left out: it is the same work with and without speculation). Equality: every greedy output with
speculation equals the one without, over the edit set (from the waves above) and over HumanEval's
164 prompts (in this process, the engine directly). Writes benchmarks/results/speculative.json.
One command reproduces it all:

    .venv/bin/python benchmarks/speculative.py

A quick check that it works: `--cases 2 --max-tokens 64 --streams 1 --humaneval 4 --spec-types ngram-mod`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from contextlib import ExitStack
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from servers import free_port, llama_server_cmd, qwenkit_cmd, running

from qwenkit.bench.edits import edit_cases
from qwenkit.engines.llamacpp.vendor import tool, work_dir
from qwenkit.store import resolve

RESULT = Path(__file__).resolve().parent / "results" / "speculative.json"
SPEC_TYPES = ("ngram-mod", "ngram-simple", "ngram-map-k")
GREEDY = {"temperature": 0, "top_p": 1, "top_k": 0, "min_p": 0, "repetition_penalty": 1, "repeat_penalty": 1}
STORIES = (
    "Write a story about a lighthouse keeper who finds a message in a bottle.",
    "Write a story about a city where it never stops raining.",
    "Write a story about two rival bakers in a small village.",
    "Write a story about the last tree on a distant planet.",
)


def stream(base: str, body: dict[str, Any], route: str) -> dict[str, Any]:
    """One streamed request: its text, completion tokens and first/last token times."""
    body = {**body, "stream": True, "stream_options": {"include_usage": True}}
    text, first, last, tokens = [], None, None, None
    with httpx.stream("POST", f"{base}{route}", json=body, timeout=3600) as r:
        r.raise_for_status()
        for line in r.iter_lines():
            if not line.startswith("data:") or line[5:].strip() == "[DONE]":
                continue
            event = json.loads(line[5:])
            for choice in event.get("choices") or []:
                piece = (choice.get("delta") or {}).get("content") or choice.get("text") or ""
                if piece:
                    now = time.perf_counter()
                    first = first or now
                    last = now
                    text.append(piece)
            if event.get("usage"):
                tokens = event["usage"]["completion_tokens"]
    if first is None or last is None or tokens is None:
        raise RuntimeError(f"{base}: a stream without tokens or usage")
    return {"text": "".join(text), "tokens": tokens, "first": first, "last": last}


def wave(base: str, bodies: list[tuple[str, dict[str, Any]]]) -> dict[str, Any]:
    """The requests at once: their outputs and the wave's decode tokens/s."""
    outs: list[dict[str, Any] | None] = [None] * len(bodies)
    errors: list[BaseException] = []

    def one(i: int, route: str, body: dict[str, Any]) -> None:
        try:
            outs[i] = stream(base, body, route)
        except BaseException as exc:  # re-raised below, on the main thread
            errors.append(exc)

    threads = [threading.Thread(target=one, args=(i, *rb)) for i, rb in enumerate(bodies)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    done = [o for o in outs if o is not None]
    span = max(o["last"] for o in done) - min(o["first"] for o in done)
    decoded = sum(o["tokens"] - 1 for o in done)
    return {"decode_tps": decoded / span if span > 0 else 0.0, "outputs": done, "tokens": decoded}


def chat_body(content: str, max_tokens: int, extra: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    body = {"model": "default", "messages": [{"role": "user", "content": content}], "max_tokens": max_tokens}
    return "/v1/chat/completions", {**body, **GREEDY, **extra}


def random_body(seed: int, max_tokens: int, extra: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    prompt = [int(t) for t in np.random.default_rng(seed).integers(1000, 30000, size=64)]
    body = {"model": "default", "prompt": prompt, "max_tokens": max_tokens}
    return "/v1/completions", {**body, **GREEDY, **extra}


def measure(systems: dict[str, tuple[str, dict[str, Any]]], waves: list[list[Any]], label: str) -> dict[str, Any]:
    """Each wave (a list of body makers taking `extra`) on every system, the order rotating per wave."""
    names = list(systems)
    tokens = dict.fromkeys(names, 0)
    spans = dict.fromkeys(names, 0.0)
    per_wave: dict[str, list[float]] = {n: [] for n in names}
    outputs: dict[str, list[str]] = {n: [] for n in names}
    for w, makers in enumerate(waves):
        order = names[w % len(names) :] + names[: w % len(names)]
        for name in order:
            base, extra = systems[name]
            result = wave(base, [make(extra) for make in makers])
            tokens[name] += result["tokens"]
            spans[name] += result["tokens"] / result["decode_tps"] if result["decode_tps"] else 0.0
            per_wave[name].append(round(result["decode_tps"], 2))
            outputs[name] += [o["text"] for o in result["outputs"]]
        print(f"{label} wave {w + 1}/{len(waves)}: " + ", ".join(f"{n} {per_wave[n][-1]}" for n in names), flush=True)
    tps = {n: round(tokens[n] / spans[n], 2) if spans[n] else 0.0 for n in names}
    return {"decode_tps": tps, "per_wave_tps": per_wave, "outputs": outputs}


def humaneval_equality(model_path: Path, threads: int, limit: int, max_tokens: int) -> dict[str, Any]:
    """Greedy HumanEval answers with speculation on and off, in this process: how many are equal."""
    import qwenkit
    from qwenkit.evals.humaneval import HumanEval

    problems = HumanEval().problems()[:limit]
    model = qwenkit.load(str(model_path), n_threads=threads, n_ctx=2048, progress=False)
    differing: list[str] = []
    accepted = drafted = 0
    try:
        for problem in problems:
            texts = []
            for on in (False, True):
                result = model.chat(problem.prompt, max_tokens=max_tokens, speculative=on, **_greedy_params())
                texts.append(result.content)
                accepted += result.usage.accepted_prediction_tokens if on else 0
                drafted += result.usage.accepted_prediction_tokens + result.usage.rejected_prediction_tokens
            if texts[0] != texts[1]:
                differing.append(problem.id)
    finally:
        model.close()
    return {
        "problems": len(problems),
        "equal": len(problems) - len(differing),
        "differing": differing,
        "max_tokens": max_tokens,
        "accepted_share": round(accepted / drafted, 3) if drafted else 0.0,
    }


def _greedy_params() -> dict[str, Any]:
    return {k: v for k, v in GREEDY.items() if k != "repeat_penalty"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="default")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--cases", type=int, default=8, help="code-edit cases (up to 10)")
    ap.add_argument("--max-tokens", type=int, default=384, help="tokens per answer")
    ap.add_argument("--streams", default="1,4", help="concurrent streams per wave")
    ap.add_argument("--spec-types", default=",".join(SPEC_TYPES), help="llama-server --spec-type values")
    ap.add_argument("--humaneval", type=int, default=164, help="HumanEval prompts for the equality check")
    ap.add_argument("--out", type=Path, default=RESULT)
    args = ap.parse_args()
    streams = [int(s) for s in args.streams.split(",")]
    spec_types = [s for s in args.spec_types.split(",") if s]
    local = resolve(args.model)
    cases = edit_cases(args.cases)
    ctx = 4096 + args.max_tokens
    parallel = max(streams)
    logs = work_dir() / "bench-logs"
    logs.mkdir(parents=True, exist_ok=True)
    load_before = os.getloadavg()
    result: dict[str, Any] = {
        "model": local.name,
        "threads": args.threads,
        "max_tokens": args.max_tokens,
        "streams": streams,
        "cases": [c.to_dict() for c in cases],
        "spec_types": spec_types,
    }
    with ExitStack() as stack:
        port = free_port()
        base, _ = stack.enter_context(
            running(
                qwenkit_cmd(str(local.path), port, parallel=parallel, threads=args.threads, ctx=ctx),
                port,
                logs / "speculative-qwenkit.log",
            )
        )
        systems: dict[str, tuple[str, dict[str, Any]]] = {
            "qwenkit_off": (base, {"speculative": False}),
            "qwenkit_spec": (base, {"speculative": True}),
        }
        binary = tool("llama-server") if spec_types else None
        for spec in spec_types if binary is not None else []:
            port = free_port()
            cmd = llama_server_cmd(binary, local.path, port, parallel=parallel, threads=args.threads, ctx=ctx)
            url, _ = stack.enter_context(running([*cmd, "--spec-type", spec], port, logs / f"speculative-{spec}.log"))
            systems[f"llama_server_{spec}"] = (url, {})
        result["systems"] = list(systems)
        for name, (url, _) in systems.items():  # warm-up (and each edit prompt into the prompt caches)
            wave(url, [chat_body("Say hello.", 4, systems[name][1])])
        edits: dict[str, Any] = {}
        for n in streams:
            waves = [
                [partial(chat_body, cases[(i + k) % len(cases)].message, args.max_tokens) for k in range(n)]
                for i in range(0, len(cases), n)
            ]
            edits[str(n)] = measure(systems, waves, f"edits x{n}")
        off = edits[str(streams[0])]["outputs"]["qwenkit_off"]
        on = edits[str(streams[0])]["outputs"]["qwenkit_spec"]
        result["edit_outputs_equal"] = {"cases": len(off), "equal": sum(a == b for a, b in zip(off, on, strict=True))}
        story_waves = [[partial(chat_body, story, args.max_tokens)] for story in STORIES]
        random_waves = [[partial(random_body, seed, args.max_tokens)] for seed in range(4)]
        plain = {k: systems[k] for k in ("qwenkit_off", "qwenkit_spec")}
        repeat_nothing = {
            "stories": measure(plain, story_waves, "stories"),
            "random_tokens": measure(plain, random_waves, "random tokens"),
        }
    for section in (*edits.values(), *repeat_nothing.values()):
        section.pop("outputs")
    result["edits"] = edits
    result["repeat_nothing"] = repeat_nothing
    result["ratios"] = {
        **{
            f"edits_x{n}_spec_over_off": round(e["decode_tps"]["qwenkit_spec"] / e["decode_tps"]["qwenkit_off"], 3)
            for n, e in ((n, edits[str(n)]) for n in streams)
        },
        **{
            f"edits_x{n}_spec_over_{name}": round(edits[str(n)]["decode_tps"]["qwenkit_spec"] / tps, 3)
            for n in streams
            for name, tps in edits[str(n)]["decode_tps"].items()
            if name.startswith("llama_server") and tps
        },
        **{
            f"{kind}_spec_over_off": round(r["decode_tps"]["qwenkit_spec"] / r["decode_tps"]["qwenkit_off"], 3)
            for kind, r in repeat_nothing.items()
        },
    }
    if args.humaneval:
        result["humaneval_equality"] = humaneval_equality(local.path, args.threads, args.humaneval, args.max_tokens)
    result["machine"] = {
        "cpus": os.cpu_count(),
        "loadavg_before": [round(x, 2) for x in load_before],
        "loadavg_after": [round(x, 2) for x in os.getloadavg()],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result["ratios"], indent=2))
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
