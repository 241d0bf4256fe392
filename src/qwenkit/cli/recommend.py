"""`qwenkit recommend`: which Qwen model, quantization, engine and context fit a task and a machine."""

from __future__ import annotations

import json
import re

import typer
from rich.console import Console
from rich.table import Column, Table

from qwenkit.cli.common import app, err
from qwenkit.errors import QwenkitError

_SIZE = re.compile(r"^\s*([\d.]+)\s*(k|m|g|t)?(i)?b?\s*$", re.IGNORECASE)


def parse_size(text: str) -> int:
    """Bytes from `8GB`, `24GiB`, `512MiB`, `16g` (a bare number is GiB); GB is 10^9, GiB 2^30."""
    m = _SIZE.match(text)
    if m is None:
        raise QwenkitError(f"cannot read memory size {text!r}: give e.g. 8GB, 24GiB or 512MiB")
    unit = (m[2] or "g").lower()
    power = "kmgt".index(unit) + 1
    base = 1024 if (m[3] or not m[2]) else 1000
    return int(float(m[1]) * base**power)


@app.command()
def recommend(
    task: str = typer.Option("chat", "--task", help="chat, code, math, reasoning, vision, multilingual or tools."),
    device: str = typer.Option("auto", "--device", help="auto (detected), cpu, cuda or mps."),
    memory: str | None = typer.Option(
        None, "--memory", help="Memory budget, e.g. 8GB or 24GiB (default: what is available now)."
    ),
    context: int | None = typer.Option(
        None, "--context", "--ctx", min=256, help="Context per user (default 8192; reasoning 32768; math 4096)."
    ),
    parallel: int = typer.Option(1, "--parallel", "-np", min=1, max=256, help="Users served at once."),
    min_speed: float | None = typer.Option(None, "--min-speed", min=0.1, help="Slowest acceptable decode, tok/s."),
    model: str | None = typer.Option(None, "--model", "-m", help="Only this catalogue model (e.g. qwen3-8b)."),
    bandwidth: float | None = typer.Option(
        None, "--bandwidth", min=1, help="Memory bandwidth in GB/s (default: measured)."
    ),
    top: int = typer.Option(5, "--top", min=1, max=50, help="How many picks to show."),
    as_json: bool = typer.Option(False, "--json", help="Print a JSON list of picks, best first."),
) -> None:
    """Rank Qwen variants for a task on this machine, with memory, speed, reasons and commands."""
    from dataclasses import replace

    from qwenkit.catalog import catalog
    from qwenkit.catalog.device import detect
    from qwenkit.catalog.recommend import Ask, recommend

    if device not in ("auto", "cpu", "cuda", "mps"):
        raise QwenkitError(f"unknown device {device!r}: auto, cpu, cuda or mps")
    dev = detect(None if device == "auto" else device)
    if bandwidth is not None:
        dev = replace(dev, bandwidth_gbs=bandwidth, bandwidth_source=f"given {bandwidth:g} GB/s")
    budget = parse_size(memory) if memory else None
    ask = Ask(task=task, n_ctx=context, n_parallel=parallel, min_tps=min_speed, model=model)
    advice = recommend(catalog(), ask, dev, budget=budget, top=top)
    if as_json:
        machine = {
            "kind": dev.kind,
            "available_bytes": budget or dev.available,
            "total_bytes": dev.total,
            "bandwidth_gbs": dev.bandwidth_gbs,
            "gpus": [{"name": g.name, "total_bytes": g.total, "free_bytes": g.free} for g in dev.gpus],
        }
        picks = [p.to_dict(parallel) for p in advice.picks]
        print(json.dumps({"device": machine, "picks": picks, "notes": advice.notes}, indent=2))
        return
    gib = (budget or dev.available) / 2**30
    err.print(
        f"[bold]{dev.kind}[/] {dev.name}  {gib:.1f} GiB usable  task [bold]{task}[/], {ask.context} tokens x {parallel}"
    )
    for g in dev.gpus:
        err.print(f"  GPU {g.name}: {g.free / 2**30:.1f} GiB free of {g.total / 2**30:.1f} GiB")
    if not advice.picks:
        err.print("[yellow]nothing in the catalogue fits.[/] What would:")
        for note in advice.notes:
            err.print(f"  - {note}")
        raise typer.Exit(1)
    table = Table("#", Column("model", no_wrap=True), "engine", "context", "memory", "tok/s", "thinking", box=None)
    for i, p in enumerate(advice.picks, 1):
        gib = p.estimate.required / 2**30
        table.add_row(
            str(i), p.variant.name, p.engine, str(p.n_ctx), f"{gib:.1f} GiB", f"{p.tps:.0f}", p.variant.entry.thinking
        )
    Console().print(table)
    for i, p in enumerate(advice.picks, 1):
        err.print(f"[dim]{i}. {'; '.join(p.reasons)}[/]")
    best = advice.picks[0]
    if best.thinking_budget:
        err.print(
            f"{best.variant.entry.name} thinks ({best.variant.entry.thinking}); "
            f"a budget of {best.thinking_budget} tokens keeps room for the answer"
        )
    for what, cmd in best.commands(parallel).items():
        err.print(f"  {what:5s} [bold]{cmd}[/]")
    for note in advice.notes:
        err.print(f"[dim]{note}[/]")
