"""What every verb shares: the typer app, the stderr console, common options and model loading."""

from __future__ import annotations

import typer
from rich.console import Console

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
CtxOpt = typer.Option(None, "--ctx", help="Context size in tokens (default: 8192, capped at the model's).")
ThreadsOpt = typer.Option(None, "--threads", "-t", help="CPU threads (default: all cores).")
EngineOpt = typer.Option(
    "auto",
    "--engine",
    "-e",
    help="auto (llama.cpp for a .gguf, transformers for a checkpoint directory), llamacpp or transformers.",
)
DtypeOpt = typer.Option("auto", "--dtype", help="Transformers engine: auto, bf16, fp16 or fp32.")
QuantOpt = typer.Option(
    None, "--quantization", "-q", help="Transformers engine: 8bit or 4bit (bitsandbytes, CUDA only)."
)
ThinkOpt = typer.Option(None, "--think/--no-think", help="Qwen3 thinking on or off (default: the model's).")


def load_model(
    model: str,
    ctx: int | None,
    threads: int | None,
    engine: str = "auto",
    dtype: str = "auto",
    quantization: str | None = None,
):
    from qwenkit.api import load

    return load(model, n_ctx=ctx, n_threads=threads, engine=engine, dtype=dtype, quantization=quantization)
