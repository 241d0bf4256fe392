"""`qwenkit serve`: the OpenAI-compatible server."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from qwenkit.cli.common import ModelOpt, app, err, export_onnx_with_progress
from qwenkit.cli.flags import with_flags
from qwenkit.errors import QwenkitError
from qwenkit.serve.cluster.options import ClusterOptions

if TYPE_CHECKING:
    from qwenkit.store import LocalModel


@app.command()
@with_flags(ClusterOptions)  # every flag but these few is a field of the options
def serve(
    model: str = ModelOpt,
    *,
    flags: dict[str, Any],
    api_key_file: Path | None = typer.Option(None, "--api-key-file", help="File of API keys, one per line."),
    skip_memory_check: bool = typer.Option(
        False, "--skip-memory-check", help="Start even if the memory estimate says the model will not fit."
    ),
    on_ray: bool = typer.Option(
        False, "--ray", help="Serve replicas on Ray Serve (a local Ray on 127.0.0.1 unless --ray-address)."
    ),
    ray_address: str | None = typer.Option(
        None, "--ray-address", help="(--ray) Join this Ray cluster (e.g. HOST:6379)."
    ),
) -> None:
    """Serve an OpenAI-compatible API (and a web chat at /) with continuous batching."""
    from qwenkit.serve.settings import read_api_keys

    flags["api_keys"] = read_api_keys(flags["api_keys"], api_key_file)
    if flags["media_dir"] is not None and not flags["media_dir"].is_dir():
        raise QwenkitError(f"--media-dir {flags['media_dir']} is not a directory")
    if on_ray or ray_address is not None:
        _serve_on_ray(model, flags, ray_address)
    else:
        _serve_here(model, flags, skip_memory_check)


def _serve_on_ray(model: str, flags: dict[str, Any], address: str | None) -> None:
    """The options as a cluster's, its paths made absolute (the same on every node), served on Ray."""
    from pydantic import ValidationError

    from qwenkit.options import first_error
    from qwenkit.serve.cluster.launch import serve_on_ray

    host, port = flags.pop("host"), flags.pop("port")  # Ray Serve's proxy binds them
    try:
        options = ClusterOptions.model_validate({"model": model, **flags})
    except ValidationError as exc:
        raise QwenkitError(f"bad --ray options: {first_error(exc)}") from None
    absolute = {
        "lora": {name: str(Path(path).resolve()) for name, path in options.lora.items()},
        "mmproj": options.mmproj.resolve() if options.mmproj is not None else None,
        "media_dir": options.media_dir.resolve() if options.media_dir is not None else None,
    }
    serve_on_ray(options.model_copy(update=absolute), address, host, port, err.print)


def _serve_here(model: str, flags: dict[str, Any], skip_memory_check: bool) -> None:
    """Fetch and check the model in the foreground, then serve it here with uvicorn."""
    import logging

    import uvicorn

    from qwenkit.api import pick_engine
    from qwenkit.catalog.fetch import resolve
    from qwenkit.serve import create_app
    from qwenkit.serve.options import ServeOptions, served_aliases

    options = ServeOptions.of(model=model, **{k: v for k, v in flags.items() if k in ServeOptions.model_fields})
    local = resolve(model)  # fetch in the foreground, with progress, before binding the port
    chosen = pick_engine(options.engine, local.format)
    if options.mmproj is not None and chosen != "llamacpp":
        raise QwenkitError("--mmproj goes with a GGUF on the llama.cpp engine")
    if chosen == "llamacpp" and not skip_memory_check:
        check_fits(local.path, options.n_ctx, options.n_parallel, options.mmproj or local.mmproj)
    _prepare_weights(local, chosen)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    app_ = create_app(options.load, options.settings(served_aliases(local, model)))
    where = f"http://{options.host}:{options.port}"
    keys = options.api_keys
    err.print(
        f"serving [bold]{model}[/] on {where} (web chat at {where}/, API at {where}/v1)"
        + (f", {len(keys)} API key(s)" if keys else ", no API key required")
    )
    uvicorn.run(app_, host=options.host, port=options.port, log_level="warning", access_log=False)


def _prepare_weights(local: LocalModel, engine: str) -> None:
    """Convert or export the weights for `engine` now, with progress, rather than in the load thread."""
    if engine in ("transformers", "vllm") and local.format == "gguf":
        from qwenkit.engines.transformers import convert_gguf

        err.print(f"preparing {local.name} for {engine} (converted once, then reused)")
        convert_gguf(local.path)
    elif engine == "onnx" and local.format != "onnx":
        export_onnx_with_progress(local.path, "int4")


def check_fits(path: Path, ctx: int | None, parallel: int, mmproj: Path | None = None) -> None:
    """Refuse up front, with the estimate, a model and context that will not fit in available memory
    (an mmproj counted at its file size: its compute buffer is not estimated)."""
    from dataclasses import replace

    from qwenkit.catalog.device import host_memory
    from qwenkit.catalog.memory import CTX_CHECKPOINTS, HEADROOM, estimate_gguf
    from qwenkit.engines.llamacpp.dryrun import dry_run
    from qwenkit.engines.llamacpp.engine import DEFAULT_CTX
    from qwenkit.store.gguf_header import scan

    n_ctx = ctx or DEFAULT_CTX
    values, _ = scan(path)
    arch = values.get("general.architecture")
    trained = values.get(f"{arch}.context_length")
    if isinstance(trained, int) and trained > 0:
        n_ctx = min(n_ctx, trained)  # as the engine caps it
    est = estimate_gguf(
        path, n_ctx=n_ctx, n_parallel=parallel, server=True, dry_run=dry_run, ctx_checkpoints=CTX_CHECKPOINTS
    )
    if mmproj is not None and mmproj.is_file():
        est = replace(est, vision=est.vision + mmproj.stat().st_size)
    _total, available = host_memory()
    gib = 2**30
    if available and est.required > available * HEADROOM:
        parts = ", ".join(f"{k} {v / gib:.2f}" for k, v in est.parts().items() if v)
        raise QwenkitError(
            f"{path.name} at --ctx {n_ctx} x --parallel {parallel} needs {est.required / gib:.1f} GiB "
            f"({parts} GiB; {est.source}) but {available / gib:.1f} GiB is available: lower --ctx or "
            f"--parallel, pick a smaller quantization (qwenkit recommend), or pass --skip-memory-check"
        )
    err.print(f"memory: needs {est.required / gib:.1f} GiB of {available / gib:.1f} GiB available ({est.source})")
