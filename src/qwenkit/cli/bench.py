"""`qwenkit bench`: load time, prefill, decode and parallel throughput of a model on this machine."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from qwenkit.cli.common import ModelOpt, app, err
from qwenkit.cli.flags import flag
from qwenkit.errors import QwenkitError
from qwenkit.options import LoadOptions


def parse_levels(text: str, option: str) -> tuple[int, ...]:
    """ "1,4,8" -> (1, 4, 8); a clear error for anything else."""
    try:
        levels = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise QwenkitError(f"{option} takes whole numbers separated by commas, e.g. 1,4,8 (got {text!r})") from None
    if not levels or min(levels) < 1:
        raise QwenkitError(f"{option} takes whole numbers of at least 1, e.g. 1,4,8 (got {text!r})")
    return levels


def progress_bar() -> Progress:
    return Progress(
        TextColumn("{task.description:<24}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=err
    )


@app.command()
def bench(
    model: str = ModelOpt,
    engine: str = flag(LoadOptions, "engine"),
    prompt_tokens: int = typer.Option(512, "--prompt-tokens", min=1, help="Prompt length of every request."),
    gen_tokens: int = typer.Option(128, "--gen-tokens", min=2, help="Tokens every request generates."),
    parallel: str = typer.Option("1,4,8", "--parallel", help="Requests in flight at once, per level: e.g. 1,4,8."),
    repeat: int = typer.Option(5, "--repeat", "-r", min=1, help="Repeats (each loads the model afresh)."),
    threads: int | None = flag(LoadOptions, "n_threads"),
    dtype: str = flag(LoadOptions, "dtype"),
    vs: str | None = typer.Option(None, "--vs", help="Reference to run interleaved: llama-bench."),
    speculative: bool = typer.Option(
        False, "--speculative", help="Also decode a code-edit request with speculative decoding off and on."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object instead of a table."),
    plot: Path | None = typer.Option(None, "--plot", help="Write a PNG chart to this file."),
) -> None:
    """Measure load time, time to first token, prefill, decode and aggregate tokens/s (median, min-max)."""
    from qwenkit.bench.speed import BenchConfig, run_bench

    if vs not in (None, "llama-bench"):
        raise QwenkitError(f"--vs knows llama-bench only (got {vs!r})")
    config = BenchConfig(
        model=model,
        engine=engine,
        prompt_tokens=prompt_tokens,
        gen_tokens=gen_tokens,
        parallel=parse_levels(parallel, "--parallel"),
        repeat=repeat,
        threads=threads,
        dtype=dtype,
        vs_llama_bench=vs is not None,
        speculative=speculative,
    )
    with progress_bar() as bar:
        task = bar.add_task("starting", total=config.steps())
        started = [0]

        def step(label: str) -> None:
            bar.update(task, description=label, completed=started[0])
            started[0] += 1

        result = run_bench(config, step).to_dict()
        bar.update(task, description="done", completed=config.steps())
    if plot is not None:
        from qwenkit.bench.plots import plot_bench

        err.print(f"plot written to {plot_bench(result, plot)}")
    if as_json:
        print(json.dumps(result, indent=2))
    else:
        Console().print(bench_table(result))


def _fmt(spread: dict[str, Any], scale: float = 1.0, digits: int = 2) -> tuple[str, str, str]:
    return tuple(f"{spread[k] * scale:.{digits}f}" for k in ("median", "min", "max"))  # type: ignore[return-value]


def bench_table(result: dict[str, Any]) -> Table:
    """The figures of a bench result as a table: median, min and max over repeats."""
    title = (
        f"{result['model']} ({result['quantization'] or result['model_format']}) on {result['engine']}, "
        f"{result['threads']} threads, {result['repeats']} repeats, prompt {result['prompt_tokens']}, "
        f"generate {result['gen_tokens']}"
    )
    table = Table("measure", "median", "min", "max", "unit", title=title, box=None)
    table.add_row("load", *_fmt(result["load_s"]), "s")
    table.add_row("time to first token", *_fmt(result["ttft_s"], 1000, 0), "ms")
    table.add_row("prefill", *_fmt(result["prefill_tokens_per_s"], digits=1), "tok/s")
    table.add_row("decode (one stream)", *_fmt(result["decode_tokens_per_s"]), "tok/s")
    for level, spread in result["aggregate_tokens_per_s_by_parallel"].items():
        table.add_row(f"aggregate, {level} in parallel", *_fmt(spread), "tok/s")
    table.add_row("peak RSS", *_fmt(result["peak_rss_bytes"], 2**-20, 0), "MiB")
    if result["peak_gpu_bytes"]:
        table.add_row("peak GPU memory", *_fmt(result["peak_gpu_bytes"], 2**-20, 0), "MiB")
    if "llama_bench" in result:
        ref, ratios = result["llama_bench"], result["qwenkit_over_llama_bench"]
        table.add_row(f"llama-bench pp{result['prompt_tokens']}", *_fmt(ref["prefill_tokens_per_s"], digits=1), "tok/s")
        table.add_row(f"llama-bench tg{result['gen_tokens']}", *_fmt(ref["decode_tokens_per_s"]), "tok/s")
        table.add_row("prefill ratio (qwenkit/llama-bench)", f"{ratios['prefill']:.3f}", "", "", "x")
        table.add_row("decode ratio (qwenkit/llama-bench)", f"{ratios['decode']:.3f}", "", "", "x")
    if "speculative" in result:
        spec = result["speculative"]
        table.add_row("code-edit decode, speculation off", *_fmt(spec["decode_tokens_per_s_off"]), "tok/s")
        table.add_row("code-edit decode, speculation on", *_fmt(spec["decode_tokens_per_s_on"]), "tok/s")
        table.add_row("speculation speedup", f"{spec['speedup']:.3f}", "", "", "x")
        table.add_row("drafted tokens accepted", *_fmt(spec["accepted_share"], 100, 0), "%")
    return table
