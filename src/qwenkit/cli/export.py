"""`qwenkit export`: a model in another runtime's format. `export onnx`: ONNX Runtime GenAI."""

from __future__ import annotations

from pathlib import Path

import typer

from qwenkit.cli.common import ModelOpt, app, err, export_onnx_with_progress

export_app = typer.Typer(no_args_is_help=True, help="Export a model to another runtime's format.")
app.add_typer(export_app, name="export")


@export_app.command("onnx")
def onnx(
    model: str = ModelOpt,
    precision: str = typer.Option("int4", "--precision", "-p", help="int4 (default), int8 or fp32 weights."),
    out: Path | None = typer.Option(
        None, "--out", "-o", help="Directory to write (default: cached under $QWENKIT_HOME/converted/onnx/)."
    ),
) -> None:
    """An ONNX Runtime GenAI model (CPU) of a GGUF or checkpoint, through its model builder.

    Run it with `qwenkit run --engine onnx --model DIR`. Exported once; later calls reuse it.
    """
    from qwenkit import store
    from qwenkit.engines.onnx import PRECISIONS
    from qwenkit.errors import QwenkitError

    if precision not in PRECISIONS:
        raise QwenkitError(f"unknown precision {precision!r} (available: {', '.join(PRECISIONS)})")
    local = store.resolve(model)
    if local.format == "onnx":
        raise QwenkitError(f"{local.path} is already an ONNX model directory")
    path = export_onnx_with_progress(local.path, precision, out)
    size = sum(f.stat().st_size for f in path.iterdir() if f.is_file())
    err.print(f"[green]ONNX model ({precision}, {size / 2**20:.0f} MiB):[/]")
    print(path)
