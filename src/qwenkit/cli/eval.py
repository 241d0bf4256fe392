"""`qwenkit eval`: a suite against a model in this process or any OpenAI-compatible server."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from qwenkit.cli.common import ThinkOpt, app, err
from qwenkit.cli.flags import flag
from qwenkit.evals import suites
from qwenkit.evals.backends import Backend, InProcess, OpenAIServer
from qwenkit.evals.records import RunRecords
from qwenkit.evals.runner import RunOptions, evaluate
from qwenkit.evals.suite import Suite
from qwenkit.options import LoadOptions


@app.command("eval")
def eval_(
    suite: str = typer.Argument(..., help=f"Suite: {', '.join(suites.SUITES)}."),
    model: str = typer.Option("default", "--model", "-m", help="Model reference to load in this process."),
    url: str | None = typer.Option(
        None, "--url", help="An OpenAI-compatible server instead (e.g. http://127.0.0.1:8000)."
    ),
    served_model: str | None = typer.Option(None, "--served-model", help="With --url: the model id to ask for."),
    model_file: Path | None = typer.Option(
        None, "--model-file", help="With --url: the served file, to record its sha256."
    ),
    limit: int | None = typer.Option(None, "--limit", min=1, help="Only the first N problems."),
    concurrency: int = typer.Option(4, "--concurrency", "-c", min=1, max=64, help="Requests generated together."),
    think: bool | None = ThinkOpt,
    thinking_budget: int | None = typer.Option(None, "--thinking-budget", min=0, help="Most reasoning tokens (Qwen3)."),
    samples: int = typer.Option(
        1, "--samples", min=1, help="Samples per problem: 1 is greedy pass@1, k>1 gives pass@k."
    ),
    max_tokens: int | None = typer.Option(
        None, "--max-tokens", min=1, help="Answer length limit (default: the suite's)."
    ),
    seed: int = typer.Option(0, "--seed", help="Seed of the first sample of each problem."),
    out: Path | None = typer.Option(
        None, "--out", help="Directory for run.json + problems.jsonl; reruns resume there."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
    engine: str = flag(LoadOptions, "engine"),
    ctx: int | None = flag(LoadOptions, "n_ctx"),
    threads: int | None = flag(LoadOptions, "n_threads"),
    timeout: float = typer.Option(1800.0, "--timeout", min=1, help="With --url: seconds one request may take."),
) -> None:
    """Score a model on a benchmark and compare with Qwen's published number."""
    chosen = suites.get(suite)
    options = RunOptions(limit, samples, concurrency, think, thinking_budget, max_tokens, seed)
    backend: Backend
    if url:
        backend = OpenAIServer(url, model=served_model, model_file=model_file, timeout=timeout)
    else:
        backend = InProcess(model, engine=engine, concurrency=concurrency, n_ctx=ctx, threads=threads)
    records = RunRecords(out) if out else None
    try:
        summary = _run_with_progress(chosen, backend, options, records)
    except KeyboardInterrupt:
        where = f"; run the same command to continue from {out}" if out else ""
        err.print(f"interrupted{where}")
        raise typer.Exit(130) from None
    finally:
        backend.close()
    if as_json:
        print(json.dumps(summary, ensure_ascii=False, indent=2))
    else:
        _print_report(chosen.name, backend.describe()["model"], summary)


def _run_with_progress(
    suite: Suite, backend: Backend, options: RunOptions, records: RunRecords | None
) -> dict[str, Any]:
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=err, transient=False) as bar:
        task = bar.add_task(suite.name, total=None)

        def progress(done: int, total: int, score: float) -> None:
            bar.update(task, completed=done, total=total, description=f"{suite.name}  pass@1 {score:5.1f}%")

        return asyncio.run(evaluate(suite, backend, options, records, progress))


def _print_report(suite: str, model: str, summary: dict[str, Any]) -> None:
    table = Table(title=f"{suite} · {model}")
    for column in ("group", "problems", "metric", "ours", "published", "difference"):
        table.add_column(column)
    metrics = summary["metrics"]
    published = summary["published"] or {}
    for name, value in metrics.items():
        if name.startswith("pass@"):
            same = published.get("metric") == name
            pub = f"{published['value']:.1f}" if same else "-"
            diff = f"{published['difference']:+.1f}" if same and published.get("difference") is not None else "-"
            table.add_row("all", str(metrics["problems"]), name, f"{value:.1f}", pub, diff)
    for group, values in metrics.get("groups", {}).items():
        for name, value in values.items():
            if name.startswith("pass@"):
                table.add_row(group, str(values["problems"]), name, f"{value:.1f}", "-", "-")
    Console().print(table)
    if published:
        Console().print(f"published: {published['source']}")
        if published["difference"] is None:
            Console().print("(no difference shown: this run covers a subset of the suite)")
    if summary["finish_reasons"].get("length"):
        Console().print(f"[yellow]{summary['finish_reasons']['length']} answer(s) hit --max-tokens[/]")
