"""`qwenkit export`: a model in another runtime's format. `export onnx`: ONNX Runtime GenAI;
`export lora | merged | ollama`: a tuned adapter as files llama.cpp and Ollama run."""

from __future__ import annotations

from pathlib import Path

import typer

from qwenkit.cli.common import ModelOpt, app, err, export_onnx_with_progress
from qwenkit.errors import QwenkitError

export_app = typer.Typer(
    no_args_is_help=True,
    help="Export a model to another runtime's format, or a LoRA adapter: ONNX, GGUF LoRA, merged GGUF, Ollama.",
)
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

    if precision not in PRECISIONS:
        raise QwenkitError(f"unknown precision {precision!r} (available: {', '.join(PRECISIONS)})")
    local = store.resolve(model)
    if local.format == "onnx":
        raise QwenkitError(f"{local.path} is already an ONNX model directory")
    path = export_onnx_with_progress(local.path, precision, out)
    size = sum(f.stat().st_size for f in path.iterdir() if f.is_file())
    err.print(f"[green]ONNX model ({precision}, {size / 2**20:.0f} MiB):[/]")
    print(path)


AdapterOpt = typer.Option(
    ..., "--adapter", "-a", help="The peft adapter directory, or the run directory `qwenkit tune --out` made."
)
BaseOpt = typer.Option(
    None, "--model", "-m", help="The base model reference (default: the one the adapter was trained on)."
)


def _export():
    try:
        from qwenkit.tune import export
    except ImportError as exc:
        missing = f"qwenkit export needs the tune extra ({exc.name} is missing): pip install 'qwenkit[tune]'"
        raise QwenkitError(missing) from None
    return export


def _adapter(export, path: Path) -> Path:
    """The adapter directory `path` names; a run directory's `adapter/`, said so."""
    adapter = export.adapter_dir(path)
    if adapter != path:
        err.print(f"using the adapter in {adapter} (the run directory's adapter/)")
    return adapter


def _written(path: Path) -> None:
    err.print(f"[green]ok[/] {path} ({path.stat().st_size / 2**20:.1f} MiB)")


@export_app.command("lora")
def lora(
    adapter: Path = AdapterOpt,
    out: Path = typer.Option(..., "--out", "-o", help="The GGUF LoRA file to write."),
    model: str | None = BaseOpt,
    outtype: str = typer.Option("f32", "--outtype", help="f32, f16, bf16 or q8_0."),
) -> None:
    """A GGUF LoRA for the base GGUF (serve it with `qwenkit serve --lora NAME=FILE`)."""
    export = _export()
    _written(export.export_lora(_adapter(export, adapter), out, model=model, outtype=outtype))


@export_app.command("merged")
def merged(
    adapter: Path = AdapterOpt,
    out: Path = typer.Option(..., "--out", "-o", help="The merged GGUF file to write."),
    model: str | None = BaseOpt,
    quant: str = typer.Option("q4_k_m", "--quant", help="q4_k_m, q5_k_m, q6_k, q8_0, f16, bf16 or f32."),
) -> None:
    """The adapter merged into the base in full precision, then quantized by llama.cpp."""
    export = _export()
    _written(export.export_merged(_adapter(export, adapter), out, model=model, quant=quant))


@export_app.command("ollama")
def ollama(
    adapter: Path = AdapterOpt,
    out: Path = typer.Option(..., "--out", "-o", help="Directory for the Modelfile and the GGUF LoRA."),
    model: str | None = BaseOpt,
) -> None:
    """An Ollama Modelfile (base GGUF + GGUF LoRA, Qwen's template and stop tokens)."""
    export = _export()
    adapter = _adapter(export, adapter)
    base = export.adapter_base(adapter, model)
    if base.source.suffix != ".gguf":
        raise QwenkitError("Ollama needs a GGUF base; pass --model with the GGUF the adapter was trained on")
    lora_file = export.export_lora(adapter, out / "adapter.gguf", model=str(base.source))
    text = export.ollama_modelfile(base.source, lora_file, _template(base))
    (out / "Modelfile").write_text(text, encoding="utf-8")
    err.print(f"[green]ok[/] {out / 'Modelfile'}; then: ollama create NAME -f {out / 'Modelfile'}")


def _template(base) -> str | None:
    from transformers import AutoTokenizer

    template = AutoTokenizer.from_pretrained(str(base.checkpoint)).chat_template
    return template if isinstance(template, str) else None
