"""`qwenkit serve`: the OpenAI-compatible server."""

from __future__ import annotations

from pathlib import Path

import typer

from qwenkit.cli.common import CtxOpt, DtypeOpt, EngineOpt, ModelOpt, QuantOpt, ThreadsOpt, app, err, parse_lora


@app.command()
def serve(
    model: str = ModelOpt,
    host: str = typer.Option("127.0.0.1", "--host", help="Address to bind (127.0.0.1 unless told otherwise)."),
    port: int = typer.Option(8000, "--port", "-p", min=1, max=65535),
    parallel: int = typer.Option(4, "--parallel", "-np", min=1, max=64, help="Requests decoded together."),
    ctx: int | None = CtxOpt,
    threads: int | None = ThreadsOpt,
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
    lora: list[str] = typer.Option(
        [], "--lora", help="NAME=FILE.gguf: a GGUF LoRA requests select with model=NAME (repeatable)."
    ),
    effort_budgets: str = typer.Option(
        "",
        "--reasoning-effort-budgets",
        help="Thinking budgets per reasoning_effort, e.g. low=512,medium=2048,high=none.",
    ),
) -> None:
    """Serve an OpenAI-compatible API (and a web chat at /) with continuous batching."""
    import logging

    import uvicorn

    from qwenkit import store
    from qwenkit.api import load
    from qwenkit.chat.budget import parse_effort_budgets
    from qwenkit.serve import ServeSettings, create_app
    from qwenkit.serve.settings import read_api_keys

    efforts = parse_effort_budgets(effort_budgets)
    adapters = parse_lora(lora)
    keys = read_api_keys(api_key, api_key_file)
    local = store.resolve(model)  # fetch in the foreground, with progress, before binding the port
    from qwenkit.api import pick_engine

    if pick_engine(engine, local.format) == "transformers" and local.format == "gguf":
        from qwenkit.engines.transformers import convert_gguf

        err.print(f"preparing {local.name} for transformers (converted once, then reused)")
        convert_gguf(local.path)
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
        lora=tuple(adapters.items()),
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
