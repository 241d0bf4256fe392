"""`qwenkit pull` and `qwenkit models`: the model cache."""

from __future__ import annotations

import typer
from rich.console import Console
from rich.table import Table

from qwenkit.cli.common import app, err


@app.command()
def pull(ref: str = typer.Argument("default", help="Model reference to fetch and verify.")) -> None:
    """Fetch a model into the cache and verify its sha256."""
    from qwenkit import store

    m = store.pull(ref)
    err.print(f"[green]ok[/] {m.name}  {m.size / 2**20:.0f} MiB  {m.quant or ''}  {m.path}")


@app.command()
def models() -> None:
    """List the models in the cache."""
    from qwenkit import store

    table = Table("name", "size", "quant", "path", box=None)
    for m in store.list_models():
        table.add_row(m.name, f"{m.size / 2**20:.0f} MiB", m.quant or "-", str(m.path))
    Console().print(table)
