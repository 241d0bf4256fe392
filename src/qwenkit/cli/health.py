"""`qwenkit health`: healthy, degraded or unhealthy, with advice; the exit status says which."""

from __future__ import annotations

import json
from typing import Any

import typer
from rich.console import Console
from rich.markup import escape

from qwenkit.cli.common import app
from qwenkit.cli.flags import flag
from qwenkit.options import LoadOptions

_COLOURS = {"healthy": "green", "degraded": "yellow", "unhealthy": "red"}


@app.command()
def health(
    model: str | None = typer.Option(None, "--model", "-m", help="Load this model here and probe it."),
    url: str | None = typer.Option(None, "--url", help="Probe this running server (e.g. http://127.0.0.1:8000)."),
    api_key: str | None = typer.Option(None, "--api-key", help="Bearer key for the server."),
    engine: str = flag(LoadOptions, "engine"),
    threads: int | None = flag(LoadOptions, "n_threads"),
    probe_tokens: int = typer.Option(32, "--probe-tokens", min=2, help="Tokens the probe generates."),
    max_ttft: float = typer.Option(2.0, "--max-ttft", min=0.0, help="Seconds to first token before degraded."),
    unhealthy_ttft: float = typer.Option(10.0, "--unhealthy-ttft", min=0.0, help="... before unhealthy."),
    min_decode_ratio: float = typer.Option(
        0.5, "--min-decode-ratio", min=0.0, help="Decode tok/s over the memory-bandwidth roofline before degraded."
    ),
    min_memory: float = typer.Option(0.10, "--min-memory", min=0.0, max=1.0, help="Available memory share."),
    max_queue: int = typer.Option(1, "--max-waiting", min=1, help="Waiting requests that make it degraded."),
    max_error_rate: float = typer.Option(0.01, "--max-error-rate", min=0.0, max=1.0, help="5xx share of completions."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """Probe a model or a server: a short real generation, /health and /metrics, graded against thresholds.

    Exit status: 0 healthy, 1 degraded (e.g. a `serve --ray` cluster with fewer replicas ready than
    wanted), 2 unhealthy (as a container health check that should only fail when unhealthy:
    `qwenkit health --url URL; [ $? -lt 2 ]`).
    """
    from qwenkit.bench.health import Thresholds, check

    thresholds = Thresholds(
        ttft_degraded_s=max_ttft,
        ttft_unhealthy_s=max(unhealthy_ttft, max_ttft),
        decode_degraded_ratio=min_decode_ratio,
        decode_unhealthy_ratio=min(min_decode_ratio, Thresholds.decode_unhealthy_ratio),
        memory_degraded_ratio=min_memory,
        memory_unhealthy_ratio=min(min_memory, Thresholds.memory_unhealthy_ratio),
        queue_degraded=max_queue,
        error_rate_degraded=max_error_rate,
        error_rate_unhealthy=max(max_error_rate, Thresholds.error_rate_unhealthy),
    )
    options: dict[str, Any] = {"probe_tokens": probe_tokens}
    if model is not None:
        options.update(engine=engine, threads=threads)
    report = check(model=model, url=url, thresholds=thresholds, api_key=api_key, **options)
    if as_json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        console = Console(highlight=False, soft_wrap=True)
        colour = _COLOURS[report.status]
        console.print(f"[bold {colour}]{report.status}[/]  {escape(report.probe.target)}")
        for f in report.findings:
            console.print(f"  [{_COLOURS[f.status]}]{f.status:<9}[/] {f.check:<10} {escape(f.message)}")
            for advice in f.advice:
                console.print(f"{'':22}- {escape(advice)}")
    raise typer.Exit(report.exit_code)
