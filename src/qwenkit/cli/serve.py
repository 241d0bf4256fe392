"""`qwenkit serve`: the OpenAI-compatible server."""

from __future__ import annotations

from pathlib import Path

import typer

from qwenkit.cli.common import (
    CtxOpt,
    DataParallelOpt,
    DraftMaxOpt,
    DtypeOpt,
    EngineOpt,
    ExecutorOpt,
    ModelOpt,
    PipelineParallelOpt,
    PrefixCacheOpt,
    QuantOpt,
    SpeculativeOpt,
    TensorParallelOpt,
    ThreadsOpt,
    app,
    err,
    export_onnx_with_progress,
    parse_lora,
    vllm_parallelism,
)
from qwenkit.errors import QwenkitError


@app.command()
def serve(
    model: str = ModelOpt,
    host: str = typer.Option("127.0.0.1", "--host", help="Address to bind (127.0.0.1 unless told otherwise)."),
    port: int = typer.Option(8000, "--port", "-p", min=1, max=65535),
    parallel: int = typer.Option(4, "--parallel", "-np", min=1, max=64, help="Requests decoded together."),
    ctx: int | None = CtxOpt,
    threads: int | None = ThreadsOpt,
    speculative: str = SpeculativeOpt,
    draft_max: int = DraftMaxOpt,
    engine: str = EngineOpt,
    dtype: str = DtypeOpt,
    quantization: str | None = QuantOpt,
    api_key: list[str] = typer.Option([], "--api-key", help="Accepted API key (repeatable)."),
    api_key_file: Path | None = typer.Option(None, "--api-key-file", help="File of API keys, one per line."),
    rpm: int | None = typer.Option(None, "--rate-limit-rpm", min=1, help="Requests per minute per key."),
    tpm: int | None = typer.Option(None, "--rate-limit-tpm", min=1, help="Tokens per minute per key."),
    max_queue: int = typer.Option(64, "--max-queue", min=0, help="Requests waiting for a slot before 429."),
    max_body: int = typer.Option(1_000_000, "--max-body-bytes", min=1024, help="Largest request body."),
    max_tokens_cap: int = typer.Option(8192, "--max-tokens-cap", min=1, help="Largest max_tokens a request may ask."),
    cors: list[str] = typer.Option([], "--cors-origin", help="Allowed CORS origin (repeatable; none by default)."),
    log_prompts: bool = typer.Option(False, "--log-prompts", help="Log prompt text (off by default)."),
    skip_memory_check: bool = typer.Option(
        False, "--skip-memory-check", help="Start even if the memory estimate says the model will not fit."
    ),
    max_n: int = typer.Option(
        4, "--max-n", min=1, max=128, help="Most choices (n, best_of) per request (at most --parallel)."
    ),
    stored_responses: int = typer.Option(
        256, "--max-stored-responses", min=0, help="Responses kept in memory for previous_response_id."
    ),
    served_name: str | None = typer.Option(
        None, "--served-model-name", help="The model's id in responses (default: its catalogue name or file stem)."
    ),
    lora: list[str] = typer.Option(
        [], "--lora", help="NAME=FILE.gguf: a GGUF LoRA requests select with model=NAME (repeatable)."
    ),
    mmproj: Path | None = typer.Option(
        None,
        "--mmproj",
        help="A Qwen-VL GGUF's vision projector (llama.cpp): the model then takes images. "
        "Catalogue names (qwen2.5-vl-3b-instruct) bring their own.",
    ),
    allow_runtime_lora: bool = typer.Option(
        False,
        "--allow-runtime-lora",
        help="Serve POST /v1/load_lora_adapter and /v1/unload_lora_adapter (needs --api-key).",
    ),
    allow_remote_media: bool = typer.Option(
        False,
        "--allow-remote-media",
        help="Let image_url parts name http(s) URLs (fetched with size and time limits; public addresses only).",
    ),
    media_dir: Path | None = typer.Option(
        None, "--media-dir", help="Let image_url parts name files (paths, file:// URLs) under this directory."
    ),
    media_hosts: list[str] = typer.Option(
        [], "--media-host", help="A remote image host exempt from the private-address refusal (repeatable)."
    ),
    max_images: int = typer.Option(8, "--max-images", min=0, max=256, help="Most images per request."),
    image_max_tokens: int | None = typer.Option(
        None, "--image-max-tokens", min=4, help="Most tokens one image may take (vision models; 28x28 px each)."
    ),
    effort_budgets: str = typer.Option(
        "",
        "--reasoning-effort-budgets",
        help="Thinking budgets per reasoning_effort, e.g. low=512,medium=2048,high=none.",
    ),
    on_ray: bool = typer.Option(
        False, "--ray", help="Serve replicas on Ray Serve (a local Ray on 127.0.0.1 unless --ray-address)."
    ),
    ray_address: str | None = typer.Option(
        None, "--ray-address", help="(--ray) Join this Ray cluster (e.g. HOST:6379)."
    ),
    replicas: int | None = typer.Option(None, "--replicas", min=1, help="(--ray) A fixed number of replicas."),
    min_replicas: int | None = typer.Option(None, "--min-replicas", min=0, help="(--ray) Autoscale from this many."),
    max_replicas: int | None = typer.Option(None, "--max-replicas", min=1, help="(--ray) Autoscale up to this many."),
    target_ongoing: float = typer.Option(2.0, "--target-ongoing-requests", min=0.1, help="(--ray) Autoscaling target."),
    upscale_delay: float = typer.Option(30.0, "--upscale-delay", min=0, help="(--ray) Seconds of load before adding."),
    downscale_delay: float = typer.Option(
        600.0, "--downscale-delay", min=0, help="(--ray) Idle seconds before removing."
    ),
    cpus_per_replica: float = typer.Option(
        1.0, "--cpus-per-replica", min=0.01, help="(--ray) CPUs declared per replica."
    ),
    router: str = typer.Option("prefix", "--router", help="(--ray) prefix (cache-aware) or default (Ray's)."),
    max_imbalance: int = typer.Option(
        4, "--max-imbalance", min=0, help="(--ray) Requests a prefix holder may be busier than the idlest replica."
    ),
    prefix_cache_tokens: int | None = PrefixCacheOpt,
    tensor_parallel: int = TensorParallelOpt,
    pipeline_parallel: int = PipelineParallelOpt,
    data_parallel: int = DataParallelOpt,
    executor: str | None = ExecutorOpt,
) -> None:
    """Serve an OpenAI-compatible API (and a web chat at /) with continuous batching."""
    import logging

    import uvicorn

    from qwenkit.api import load
    from qwenkit.catalog.fetch import resolve
    from qwenkit.chat.budget import parse_effort_budgets
    from qwenkit.serve import ServeSettings, create_app
    from qwenkit.serve.settings import read_api_keys

    efforts = parse_effort_budgets(effort_budgets)
    adapters = parse_lora(lora)
    keys = read_api_keys(api_key, api_key_file)
    if allow_runtime_lora and not keys:
        raise QwenkitError("--allow-runtime-lora needs --api-key (anyone could load files from this machine otherwise)")
    parallelism = vllm_parallelism(tensor_parallel, pipeline_parallel, data_parallel, executor)
    if media_dir is not None and not media_dir.is_dir():
        raise QwenkitError(f"--media-dir {media_dir} is not a directory")
    if on_ray or ray_address is not None:
        from pydantic import ValidationError

        if engine == "vllm":
            raise QwenkitError(
                "--ray serves llama.cpp or transformers replicas; vLLM distributes itself (--engine vllm)"
            )

        from qwenkit.serve.cluster.launch import serve_on_ray
        from qwenkit.serve.cluster.options import ClusterOptions

        if allow_runtime_lora:
            raise QwenkitError(
                "--allow-runtime-lora is not supported with --ray: a runtime load would reach one replica only; "
                "give the adapters with --lora (loaded on every replica)"
            )
        if prefix_cache_tokens is not None:
            raise QwenkitError("--prefix-cache-tokens is not supported with --ray yet: replicas keep the default")
        if cors:
            raise QwenkitError("--cors-origin is not supported with --ray yet: set CORS on the proxy in front")
        try:
            options = ClusterOptions.model_validate(
                {
                    "model": model,
                    "engine": engine,
                    "ctx": ctx,
                    "threads": threads,
                    "parallel": parallel,
                    "max_queue": max_queue,
                    "dtype": dtype,
                    "quantization": quantization,
                    "effort_budgets": effort_budgets,
                    "replicas": replicas,
                    "min_replicas": min_replicas,
                    "max_replicas": max_replicas,
                    "target_ongoing_requests": target_ongoing,
                    "upscale_delay_s": upscale_delay,
                    "downscale_delay_s": downscale_delay,
                    "cpus_per_replica": cpus_per_replica,
                    "router": router,
                    "max_imbalance": max_imbalance,
                    "api_keys": keys,
                    "requests_per_minute": rpm,
                    "tokens_per_minute": tpm,
                    "max_body_bytes": max_body,
                    "max_tokens_cap": max_tokens_cap,
                    "log_prompts": log_prompts,
                    "max_n": max_n,
                    "max_stored_responses": stored_responses,
                    "served_model_name": served_name,
                    "lora": {name: str(Path(path).resolve()) for name, path in adapters.items()},  # for every node
                    "mmproj": str(mmproj.resolve()) if mmproj is not None else None,
                    "image_max_tokens": image_max_tokens,
                    "allow_remote_media": allow_remote_media,
                    "media_dir": str(media_dir.resolve()) if media_dir is not None else None,
                    "max_images": max_images,
                    "media_hosts": frozenset(media_hosts),
                }
            )
        except ValidationError as exc:
            raise QwenkitError(f"bad --ray options: {exc.errors()[0]['msg'].removeprefix('Value error, ')}") from None
        serve_on_ray(options, ray_address, host, port, err.print)
        return
    local = resolve(model)  # fetch in the foreground, with progress, before binding the port
    from qwenkit.api import pick_engine

    chosen = pick_engine(engine, local.format)
    if mmproj is not None and chosen != "llamacpp":
        raise QwenkitError("--mmproj goes with a GGUF on the llama.cpp engine")
    if chosen == "llamacpp" and not skip_memory_check:
        check_fits(local.path, ctx, parallel, mmproj or local.mmproj)

    if chosen in ("transformers", "vllm") and local.format == "gguf":
        from qwenkit.engines.transformers import convert_gguf

        err.print(f"preparing {local.name} for {chosen} (converted once, then reused)")
        convert_gguf(local.path)
    elif chosen == "onnx" and local.format != "onnx":
        export_onnx_with_progress(local.path, "int4")
    settings = ServeSettings(
        host=host,
        port=port,
        api_keys=keys,
        requests_per_minute=rpm,
        tokens_per_minute=tpm,
        max_body_bytes=max_body,
        max_tokens_cap=max_tokens_cap,
        cors_origins=tuple(cors),
        log_prompts=log_prompts,
        max_n=min(max_n, parallel),
        max_stored_responses=stored_responses,  # a request's choices run side by side
        served_name=served_name,
        # the reference typed, unless a path (the server's file system is nobody's business)
        model_aliases=(local.name, local.path.name, *([model] if local.source != "local" else [])),
        lora=tuple(adapters.items()),
        allow_runtime_lora=allow_runtime_lora,
        allow_remote_media=allow_remote_media,
        media_dir=media_dir,
        max_images=max_images,
        media_hosts=frozenset(media_hosts),
    )
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    def load_model():
        m = load(
            model,
            n_ctx=ctx,
            n_threads=threads,
            n_parallel=parallel,
            max_waiting=max_queue,
            progress=False,
            engine=engine,
            dtype=dtype,
            quantization=quantization,
            lora=adapters,
            mmproj=mmproj,
            image_max_tokens=image_max_tokens,
            prefix_cache_tokens=prefix_cache_tokens,
            speculative=speculative,
            draft_max=draft_max,
            **parallelism,
        )
        m.effort_budgets = efforts
        return m

    app_ = create_app(load_model, settings)
    where = f"http://{host}:{port}"
    err.print(
        f"serving [bold]{model}[/] on {where} (web chat at {where}/, API at {where}/v1)"
        + (f", {len(keys)} API key(s)" if keys else ", no API key required")
    )
    uvicorn.run(app_, host=host, port=port, log_level="warning", access_log=False)


def check_fits(path: Path, ctx: int | None, parallel: int, mmproj: Path | None = None) -> None:
    """Refuse up front, with the estimate, a model and context that will not fit in available memory
    (an mmproj counted at its file size: its compute buffer is not estimated)."""
    from dataclasses import replace

    from qwenkit.catalog.device import host_memory
    from qwenkit.catalog.memory import HEADROOM, estimate_gguf
    from qwenkit.engines.llamacpp.dryrun import dry_run
    from qwenkit.engines.llamacpp.engine import DEFAULT_CTX
    from qwenkit.store.gguf_header import scan

    n_ctx = ctx or DEFAULT_CTX
    values, _ = scan(path)
    arch = values.get("general.architecture")
    trained = values.get(f"{arch}.context_length")
    if isinstance(trained, int) and trained > 0:
        n_ctx = min(n_ctx, trained)  # as the engine caps it
    est = estimate_gguf(path, n_ctx=n_ctx, n_parallel=parallel, server=True, dry_run=dry_run)
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
