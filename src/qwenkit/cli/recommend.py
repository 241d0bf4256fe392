"""`qwenkit recommend`: which Qwen model, quantization, engine and context fit a task and a machine."""

from __future__ import annotations

import json
import re
import textwrap
import time
from typing import TYPE_CHECKING

import typer
from rich.console import Console
from rich.markup import escape

from qwenkit.cli.common import app
from qwenkit.errors import QwenkitError

if TYPE_CHECKING:
    from qwenkit.catalog.device import Device
    from qwenkit.catalog.recommend import Advice, Ask

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
    device: str = typer.Option(
        "auto", "--device", help="auto (detected), cpu, cuda or mps; cuda/mps with --memory plans for one not here."
    ),
    memory: str | None = typer.Option(
        None, "--memory", help="Memory budget, e.g. 8GB or 24GiB (default: what is available now)."
    ),
    gpu: str | None = typer.Option(
        None, "--gpu", help="Plan for this GPU or Apple chip from the table (rtx4090, l4, a100-80, h100, m3-pro...)."
    ),
    context: int | None = typer.Option(
        None, "--context", "--ctx", min=256, help="Context per user (default 8192; reasoning 32768; math 4096)."
    ),
    parallel: int = typer.Option(1, "--parallel", "-np", min=1, max=256, help="Users served at once."),
    min_speed: float | None = typer.Option(None, "--min-speed", min=0.1, help="Slowest acceptable decode, tok/s."),
    model: str | None = typer.Option(None, "--model", "-m", help="Only this catalogue model (e.g. qwen3-8b)."),
    bandwidth: float | None = typer.Option(
        None,
        "--bandwidth",
        min=1,
        help="Memory bandwidth in GB/s (default: measured on a CPU, the GPU table's for a GPU or Apple chip).",
    ),
    largest: bool = typer.Option(
        False, "--largest", help="Rank the largest model that fits first, even a tight fit or a slow one."
    ),
    top: int = typer.Option(5, "--top", min=1, max=50, help="How many picks to show."),
    as_json: bool = typer.Option(False, "--json", help="Print a JSON list of picks, best first."),
) -> None:
    """Rank Qwen variants for a task on this machine, or on one you plan for (--gpu, or --device
    cuda|mps with --memory), with memory, speed, reasons and commands."""
    from qwenkit.catalog import catalog
    from qwenkit.catalog.recommend import Ask, recommend

    if device not in ("auto", "cpu", "cuda", "mps"):
        raise QwenkitError(f"unknown device {device!r}: auto, cpu, cuda or mps")
    budget = parse_size(memory) if memory else None
    dev = _device(None if device == "auto" else device, budget, gpu, bandwidth)
    ask = Ask(task=task, n_ctx=context, n_parallel=parallel, min_tps=min_speed, model=model, largest=largest)
    advice = recommend(catalog(), ask, dev, budget=budget, top=top)
    usable = budget or dev.available
    if as_json:
        machine = {
            "kind": dev.kind,
            "name": dev.name,
            "planned": dev.planned,
            "available_bytes": usable,
            "total_bytes": dev.total,
            "bandwidth_gbs": dev.bandwidth_gbs,
            "bandwidth_origin": dev.bandwidth_origin,
            "bandwidth_source": dev.bandwidth_source,
            "gpus": [{"name": g.name, "total_bytes": g.total, "free_bytes": g.free} for g in dev.gpus],
        }
        picks = [p.to_dict(parallel) for p in advice.picks]
        print(json.dumps({"plan": dev.planned, "device": machine, "picks": picks, "notes": advice.notes}, indent=2))
        return
    console = Console()
    show(console, dev, usable, ask, advice)
    if not advice.picks:
        raise typer.Exit(1)


def _device(kind: str | None, budget: int | None, gpu: str | None, bandwidth: float | None) -> Device:
    """The device to rank for: a planned one (`--gpu`, or cuda/mps with `--memory` where this
    machine has none), else the detected one; a CPU's bandwidth measured unless given."""
    from qwenkit.catalog.accelerators import find
    from qwenkit.catalog.device import detect, plan

    if gpu is not None:
        return plan(kind, budget, part=find(gpu), bandwidth=bandwidth)
    try:
        dev = detect(kind)
    except QwenkitError:
        if kind in ("cuda", "mps") and budget is not None:
            return plan(kind, budget, bandwidth=bandwidth)
        raise
    if bandwidth is not None:
        return dev.with_bandwidth(bandwidth, "given")
    if dev.kind == "cpu":
        from qwenkit.bench.memory import machine_bandwidth

        reading = machine_bandwidth()
        when = time.strftime("%Y-%m-%d", time.localtime(reading.measured_at))
        how = f" (a copy on {reading.threads} threads{f', cached {when}' if reading.cached else ''})"
        return dev.with_bandwidth(reading.bytes_per_s / 1e9, "measured", how)
    return dev


def show(console: Console, dev: Device, usable: int, ask: Ask, advice: Advice) -> None:
    """The advice as text that fits 80 columns: the machine, a short table, each pick's reasons
    folded below it, the best pick's commands and the notes."""
    if dev.planned:
        where = f"plan for {dev.name} ({dev.kind}), not this machine" if dev.name else f"plan for a {dev.kind} device"
    else:
        where = f"{dev.kind} {dev.name}".rstrip()
    console.print(f"[bold]{escape(where)}[/]: {usable / 2**30:.1f} GiB usable")
    users = "user" if ask.n_parallel == 1 else "users"
    console.print(f"task [bold]{ask.task}[/], {ask.context} tokens x {ask.n_parallel} {users}")
    console.print(_wrapped(f"memory bandwidth {dev.bandwidth_source}", ""))
    for g in dev.gpus:
        console.print(f"  GPU {escape(g.name)}: {g.free / 2**30:.1f} GiB free of {g.total / 2**30:.1f} GiB")
    if not advice.picks:
        console.print("[yellow]nothing in the catalogue fits.[/] What would:")
        for note in advice.notes:
            console.print(_wrapped(f"- {note}", "  "))
        return
    width = max(len(p.variant.name) for p in advice.picks)
    console.print(f"{'#':>2} {'model':<{width}} {'ctx':>4} {'GiB':>5} {'tok/s':>5} think", style="bold")
    for i, p in enumerate(advice.picks, 1):
        think = {"thinking-only": "only", "none": "-"}.get(p.variant.entry.thinking, p.variant.entry.thinking)
        ctx = f"{p.n_ctx // 1024}K" if p.n_ctx % 1024 == 0 else str(p.n_ctx)
        gib = f"{p.estimate.required / 2**30:.1f}"
        console.print(f"{i:>2} {p.variant.name:<{width}} {ctx:>4} {gib:>5} {p.tps:>5.0f} {think}", markup=False)
        engine = [f"engine {p.engine}"] if p.engine != "llamacpp" else []
        console.print(_wrapped("; ".join(engine + p.reasons), "   "), style="dim", markup=False)
    best = advice.picks[0]
    if best.thinking_budget:
        console.print(
            _wrapped(
                f"{best.variant.entry.name} thinks ({best.variant.entry.thinking}); "
                f"a budget of {best.thinking_budget} tokens keeps room for the answer",
                "",
            )
        )
    for what, cmd in best.commands(ask.n_parallel).items():
        console.print(f"  {what:5s} [bold]{escape(cmd)}[/]", soft_wrap=True)
    for note in advice.notes:
        console.print(_wrapped(note, ""), style="dim", markup=False)


def _wrapped(text: str, indent: str, width: int = 79) -> str:
    return textwrap.fill(text, width=width, initial_indent=indent, subsequent_indent=indent + "  ")
