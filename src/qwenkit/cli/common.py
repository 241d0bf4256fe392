"""What every verb shares: the typer app, the stderr console, common options and model loading."""

from __future__ import annotations

from pathlib import Path
from typing import Any

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
SpeculativeOpt = typer.Option(
    "ngram",
    "--speculative",
    help="Speculative decoding for requests that do not say: ngram (draft from the context, verify in one "
    "batch; lossless) or off.",
)
DraftMaxOpt = typer.Option(8, "--draft-max", min=0, max=64, help="Drafted tokens per sequence and step at most.")
EngineOpt = typer.Option(
    "auto",
    "--engine",
    "-e",
    help="auto (llama.cpp for a .gguf, transformers for a checkpoint directory, onnx for an ONNX model "
    "directory), llamacpp, transformers, onnx (a .gguf or checkpoint is exported to int4 once) or vllm "
    "(its own environment: make vllm-env).",
)
TensorParallelOpt = typer.Option(1, "--tensor-parallel", min=1, help="vLLM: GPUs each layer is split over.")
PipelineParallelOpt = typer.Option(1, "--pipeline-parallel", min=1, help="vLLM: stages the layers are split into.")
DataParallelOpt = typer.Option(1, "--data-parallel", min=1, help="vLLM: replicas of the model it schedules over.")
ExecutorOpt = typer.Option(
    None, "--distributed-executor-backend", help="vLLM: mp (one machine) or ray (a Ray cluster); default: vLLM's."
)
DtypeOpt = typer.Option("auto", "--dtype", help="Transformers engine: auto, bf16, fp16 or fp32.")
QuantOpt = typer.Option(
    None, "--quantization", "-q", help="Transformers engine: 8bit or 4bit (bitsandbytes, CUDA only)."
)
PrefixCacheOpt = typer.Option(
    None,
    "--prefix-cache-tokens",
    min=0,
    help="Transformers engine: tokens of finished requests' KV kept for prompts that share a prefix "
    "(default: twice --ctx; 0: off).",
)
ThinkOpt = typer.Option(None, "--think/--no-think", help="Qwen3 thinking on or off (default: the model's).")


def parse_lora(specs: list[str]) -> dict[str, str]:
    """`--lora NAME=FILE` (or just FILE, named by its stem) options to {name: file}."""
    from pathlib import Path

    from qwenkit.errors import QwenkitError

    found: dict[str, str] = {}
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep:
            name, path = Path(spec).stem, spec
        if not name or not path:
            raise QwenkitError(f"--lora takes NAME=FILE.gguf, not {spec!r}")
        if name in found:
            raise QwenkitError(f"two LoRA adapters are named {name!r}")
        if not Path(path).exists():  # a GGUF LoRA (llama.cpp) or a peft adapter directory (transformers)
            raise QwenkitError(f"LoRA adapter not found: {path}")
        found[name] = path
    return found


def load_model(
    model: str,
    ctx: int | None,
    threads: int | None,
    engine: str = "auto",
    dtype: str = "auto",
    quantization: str | None = None,
    lora: dict[str, str] | None = None,
    image_max_tokens: int | None = None,
    mmproj: Path | None = None,
    parallelism: dict[str, Any] | None = None,
    prefix_cache_tokens: int | None = None,
    speculation: dict[str, Any] | None = None,
):
    """`qwenkit.load` for a verb; `parallelism`: vLLM's sizes and executor, `speculation`:
    `speculative` and `draft_max` (load's keywords)."""
    from qwenkit.api import load

    if engine == "onnx":  # export first (once, cached) with a progress display
        from qwenkit import store

        local = store.resolve(model)
        if local.format != "onnx":
            export_onnx_with_progress(local.path, "int4")
    return load(
        model,
        n_ctx=ctx,
        n_threads=threads,
        engine=engine,
        dtype=dtype,
        quantization=quantization,
        lora=lora,
        image_max_tokens=image_max_tokens,
        mmproj=mmproj,
        prefix_cache_tokens=prefix_cache_tokens,
        **(parallelism or {}),
        **(speculation or {}),
    )


def vllm_parallelism(tensor: int, pipeline: int, data: int, executor: str | None) -> dict[str, Any]:
    """The vLLM options as `qwenkit.load` keywords."""
    return dict(
        tensor_parallel=tensor, pipeline_parallel=pipeline, data_parallel=data, distributed_executor_backend=executor
    )


def export_onnx_with_progress(source: Path, precision: str, out: Path | None = None) -> Path:
    """`qwenkit.engines.onnx.export_onnx` with a progress bar on stderr (nothing when cached)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    from qwenkit.engines.onnx import export_onnx
    from qwenkit.engines.onnx.export import exported_dir
    from qwenkit.engines.transformers.convert import is_converted

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
