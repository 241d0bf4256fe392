"""What every verb shares: the typer app, the stderr console, common options and model loading."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.console import Console

if TYPE_CHECKING:
    from qwenkit.model import Model
    from qwenkit.options import LoadOptions

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # help texts hold literal brackets, e.g. hf:OWNER/REPO[/FILE]
    help="Run, chat with and serve the Qwen model family.",
)
err = Console(stderr=True, highlight=False, soft_wrap=True)  # no hard wraps: an error stays one line

ModelOpt = typer.Option(
    "default",
    "--model",
    "-m",
    help="Model: a catalogue name (qwen3-8b:q4_k_m, see `qwenkit models --all`), hf:OWNER/REPO[/FILE] or a path.",
)
ThinkOpt = typer.Option(None, "--think/--no-think", help="Qwen3 thinking on or off (default: the model's).")


def load_model(model: str, options: LoadOptions) -> Model:
    """`qwenkit.load` for a verb: an ONNX export first shows its progress."""
    from qwenkit.api import load_with

    if options.engine == "onnx":  # export first (once, cached) with a progress display
        from qwenkit.catalog.fetch import resolve

        local = resolve(model)
        if local.format != "onnx":
            export_onnx_with_progress(local.path, "int4")
    return load_with(model, options)


def export_onnx_with_progress(source: Path, precision: str, out: Path | None = None) -> Path:
    """`qwenkit.engines.onnx.export_onnx` with a progress bar on stderr (nothing when cached)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    from qwenkit.engines.onnx import export_onnx
    from qwenkit.engines.onnx.export import exported_dir
    from qwenkit.store.converted import is_converted

    if is_converted(out or exported_dir(source, precision)):
        return export_onnx(source, precision, out=out)
    columns = (
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    err.print(f"exporting {source.name} to ONNX ({precision}; once, then reused)")
    with Progress(*columns, console=err, transient=False) as bar:
        task = bar.add_task("preparing", total=None)

        def report(description: str, done: int, total: int) -> None:
            bar.update(task, description=description, completed=done, total=total)

        return export_onnx(source, precision, out=out, progress=report)
