"""`qwenkit tune`: LoRA fine-tuning on chat data, rendered exactly as qwenkit serves the model."""

from __future__ import annotations

from pathlib import Path

import typer

from qwenkit.cli.common import ModelOpt, app, err
from qwenkit.cli.flags import flag
from qwenkit.errors import QwenkitError
from qwenkit.options import LoadOptions


@app.command()
def tune(
    data: Path = typer.Option(
        ..., "--data", "-d", help="Training data, JSONL: messages, prompt/completion or text rows."
    ),
    model: str = ModelOpt,
    eval_data: Path | None = typer.Option(
        None, "--eval", help="Held-out data (JSONL); default: --held-out of --data is held out."
    ),
    out: Path = typer.Option(Path("qwenkit-tune"), "--out", "-o", help="Output directory (rerun to resume)."),
    rank: int = typer.Option(16, "--rank", min=1, help="LoRA rank."),
    alpha: int = typer.Option(32, "--alpha", min=1, help="LoRA alpha (scale = alpha / rank)."),
    learning_rate: float = typer.Option(2e-4, "--lr", min=0.0, help="Learning rate."),
    epochs: float = typer.Option(1.0, "--epochs", min=0.0, help="Passes over the data."),
    max_steps: int | None = typer.Option(None, "--max-steps", min=1, help="Stop after this many steps."),
    batch_size: int = typer.Option(1, "--batch-size", min=1),
    grad_accum: int = typer.Option(1, "--grad-accum", min=1, help="Batches per optimizer step."),
    max_length: int = typer.Option(1024, "--max-length", min=8, help="Longest sequence in tokens (longer are cut)."),
    eval_every: int = typer.Option(10, "--eval-every", min=1, help="Steps between train/held-out loss records."),
    save_every: int = typer.Option(50, "--save-every", min=1, help="Steps between checkpoints."),
    held_out: float = typer.Option(0.1, "--held-out", min=0.0, max=0.5, help="Share held out when no --eval."),
    dtype: str = typer.Option("auto", "--dtype", help="auto (from the hardware), float32, bfloat16 or float16."),
    checkpointing: bool | None = typer.Option(
        None, "--gradient-checkpointing/--no-gradient-checkpointing", help="Default: only when memory needs it."
    ),
    qlora: bool = typer.Option(False, "--qlora", help="CUDA: keep the base in 4-bit (bitsandbytes)."),
    seed: int = typer.Option(0, "--seed"),
    threads: int | None = flag(LoadOptions, "n_threads"),
    report: bool = typer.Option(
        False, "--report", help="Then score held-out answers before/after, stop rate, peft/GGUF/merged agreement."
    ),
    report_merged: bool = typer.Option(True, "--report-merged/--no-report-merged", help="Include the merged GGUF."),
) -> None:
    """Train a LoRA adapter (peft + trl); Ctrl-C stops with a usable checkpoint, rerunning resumes."""
    try:
        from qwenkit.tune import demo
        from qwenkit.tune.plot import plot_losses
        from qwenkit.tune.trainer import TuneSettings, read_data, resolve_base
        from qwenkit.tune.trainer import tune as run_tune
    except ImportError as exc:
        missing = f"qwenkit tune needs the tune extra ({exc.name} is missing): pip install 'qwenkit[tune]'"
        raise QwenkitError(missing) from None
    if str(data) == "demo":
        data, eval_data = demo.path("train"), eval_data or demo.path("heldout")
    dtypes = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}
    settings = TuneSettings(
        rank=rank,
        alpha=alpha,
        learning_rate=learning_rate,
        epochs=epochs,
        max_steps=max_steps,
        batch_size=batch_size,
        grad_accum=grad_accum,
        max_length=max_length,
        eval_every=eval_every,
        save_every=save_every,
        held_out=held_out,
        seed=seed,
        dtype=dtypes.get(dtype, dtype),
        gradient_checkpointing=checkpointing,
        qlora=qlora,
        threads=threads,
    )
    base = resolve_base(model)
    result = run_tune(base, data, out, settings, eval_path=eval_data, console=err)
    plot = plot_losses(result.records, out / "loss.png", title=f"LoRA on {base.name}")
    last = {k: r[k] for r in result.records for k in ("train_loss", "eval_loss") if k in r}
    losses = ", ".join(f"{k.replace('_loss', '')} loss {v:.3f}" for k, v in last.items())
    state = "[yellow]interrupted[/], checkpoint saved (rerun to resume)" if result.interrupted else "[green]done[/]"
    err.print(f"{state}: {result.steps} steps{'; ' + losses if losses else ''}")
    err.print(f"adapter: {result.adapter}" + (f"  loss curves: {plot}" if plot else ""))
    if report:
        from qwenkit.tune.report import build_report

        err.print("[dim]report: held-out answers before and after, on llama.cpp, peft and the merged GGUF[/]")
        held = read_data(data, eval_data, settings)[1] or []
        made = build_report(base, result.adapter, held, out, merged=report_merged, threads=threads)
        err.print((out / "report.md").read_text(encoding="utf-8"))
        if made.stop_rate_after < 0.95:
            err.print("[yellow]fewer than 95% of the answers stop with <|im_end|>[/]")
