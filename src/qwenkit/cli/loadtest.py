"""`qwenkit loadtest`: throughput and latency of OpenAI-compatible servers under concurrent load."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from qwenkit.cli.bench import parse_levels, progress_bar
from qwenkit.cli.common import app, err


@app.command()
def loadtest(
    urls: list[str] = typer.Argument(..., help="Server base URLs, e.g. http://127.0.0.1:8000 (several: compared)."),
    label: list[str] = typer.Option([], "--label", help="A name per URL for tables and plots (repeat, in order)."),
    concurrency: str = typer.Option("1,4,8,16,32", "--concurrency", "-c", help="Requests in flight, per level."),
    requests: int = typer.Option(64, "--requests", "-n", min=1, help="Most requests per level and server."),
    duration: float = typer.Option(120.0, "--duration", min=0.1, help="Seconds per level: no new request after."),
    max_tokens: int = typer.Option(128, "--max-tokens", min=1, help="max_tokens of every request."),
    prompt_file: Path | None = typer.Option(None, "--prompt-file", help="Prompts, one per line (default: built in)."),
    stream: bool = typer.Option(False, "--stream", help="Stream replies (measures time to first token, gaps)."),
    cancel_fraction: float = typer.Option(0.0, "--cancel-fraction", help="Share of streams the client cancels."),
    api_key: str | None = typer.Option(None, "--api-key", help="Bearer key to send."),
    model: str | None = typer.Option(None, "--model", "-m", help="Model name to ask for (default: the first listed)."),
    timeout: float = typer.Option(300.0, "--timeout", min=0.1, help="Seconds before one request counts as timed out."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object instead of tables."),
    plot: Path | None = typer.Option(None, "--plot", help="Write throughput and p95 latency charts (PNG)."),
) -> None:
    """Drive servers with the official openai client; per level: tokens/s, requests/s, latency percentiles, errors."""
    from qwenkit.bench.loadtest import DEFAULT_PROMPTS, LoadConfig, read_prompts, run_loadtest, total_steps

    config = LoadConfig(
        urls=tuple(urls),
        labels=tuple(label),
        concurrency=parse_levels(concurrency, "--concurrency"),
        requests=requests,
        duration_s=duration,
        max_tokens=max_tokens,
        prompts=read_prompts(prompt_file) if prompt_file else DEFAULT_PROMPTS,
        stream=stream,
        cancel_fraction=cancel_fraction,
        api_key=api_key,
        model=model,
        timeout_s=timeout,
    )
    with progress_bar() as bar:
        task = bar.add_task("requests", total=total_steps(config))
        result = asyncio.run(run_loadtest(config, lambda n: bar.advance(task, n)))
    if plot is not None:
        from qwenkit.bench.plots import plot_loadtest

        runs = {s["label"]: s["levels"] for s in result["servers"]}
        err.print(f"plot written to {plot_loadtest(runs, plot)}")
    if as_json:
        print(json.dumps(result, indent=2))
        return
    console = Console()
    for server in result["servers"]:
        console.print(loadtest_table(server, stream=config.stream))


def _ms(p: dict[str, float | None], key: str) -> str:
    value = p[key]
    return "-" if value is None else f"{value * 1000:.0f}"


def loadtest_table(server: dict[str, Any], *, stream: bool) -> Table:
    """One server's levels: throughput, latency percentiles (ms) and outcomes."""
    table = Table(title=f"{server['label']} ({server['model']})", box=None)
    for column in ("conc.", "tok/s", "req/s", "e2e p50/p95/p99 ms"):
        table.add_column(column, justify="right")
    if stream:
        table.add_column("TTFT p50/p95/p99 ms", justify="right")
        table.add_column("ITL p50/p95 ms", justify="right")
    table.add_column("done/cancelled/sent", justify="right")
    table.add_column("errors")
    for lv in server["levels"]:
        e2e = lv["e2e_latency_s"]
        row = [str(lv["concurrency"]), f"{lv['tokens_per_s']:.1f}", f"{lv['requests_per_s']:.2f}"]
        row.append("/".join(_ms(e2e, k) for k in ("p50", "p95", "p99")))
        if stream:
            row.append("/".join(_ms(lv["ttft_s"], k) for k in ("p50", "p95", "p99")))
            row.append("/".join(_ms(lv["inter_token_latency_s"], k) for k in ("p50", "p95")))
        row.append(f"{lv['completed']}/{lv['cancelled_by_client']}/{lv['requests_sent']}")
        row.append(", ".join(f"{k}: {n}" for k, n in lv["errors"].items()) or "none")
        table.add_row(*row)
    return table
