"""The `qwenkit` command: pull, models, run, chat (one function per verb)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from qwenkit.errors import QwenkitError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # help texts hold literal brackets, e.g. hf:OWNER/REPO[/FILE]
    help="Run, chat with and serve the Qwen model family.",
)
err = Console(stderr=True, highlight=False, soft_wrap=True)  # no hard wraps: an error stays one line

ModelOpt = typer.Option("default", "--model", "-m", help="Model reference: a name, hf:OWNER/REPO[/FILE] or a .gguf path.")
CtxOpt = typer.Option(None, "--ctx", help="Context size in tokens (default: 8192, capped at the model's).")
ThreadsOpt = typer.Option(None, "--threads", "-t", help="CPU threads (default: all cores).")
EngineOpt = typer.Option("auto", "--engine", "-e", help="auto (llama.cpp for a .gguf, transformers for a checkpoint directory), llamacpp or transformers.")
DtypeOpt = typer.Option("auto", "--dtype", help="Transformers engine: auto, bf16, fp16 or fp32.")
QuantOpt = typer.Option(None, "--quantization", "-q", help="Transformers engine: 8bit or 4bit (bitsandbytes, CUDA only).")
ThinkOpt = typer.Option(None, "--think/--no-think", help="Qwen3 thinking on or off (default: the model's).")


def _load(model: str, ctx: int | None, threads: int | None, engine: str = "auto", dtype: str = "auto", quantization: str | None = None):
    from qwenkit.api import load

    return load(model, n_ctx=ctx, n_threads=threads, engine=engine, dtype=dtype, quantization=quantization)


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


@app.command()
def run(
    prompt: str = typer.Argument(..., help="The prompt; '-' reads it from standard input."),
    model: str = ModelOpt,
    max_tokens: int = typer.Option(1024, "--max-tokens", "-n", min=1, help="Most tokens to generate."),
    temperature: Optional[float] = typer.Option(None, "--temperature", min=0.0, help="Sampling temperature (0: greedy)."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Random seed for reproducible sampling."),
    system: Optional[str] = typer.Option(None, "--system", "-s", help="A system message."),
    think: Optional[bool] = ThinkOpt,
    thinking_budget: Optional[int] = typer.Option(None, "--thinking-budget", min=0, help="Most reasoning tokens (Qwen3)."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object instead of streaming."),
    ctx: Optional[int] = CtxOpt,
    threads: Optional[int] = ThreadsOpt,
    engine: str = EngineOpt,
    dtype: str = DtypeOpt,
    quantization: Optional[str] = QuantOpt,
) -> None:
    """Answer one prompt, streaming the answer to stdout (reasoning to stderr)."""
    text = sys.stdin.read() if prompt == "-" else prompt
    if not text.strip():
        raise QwenkitError("the prompt is empty")
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": text}]
    options = dict(max_tokens=max_tokens, temperature=temperature, seed=seed, think=think, thinking_budget=thinking_budget)
    with _load(model, ctx, threads, engine, dtype, quantization) as m:  # closed: engine threads end cleanly
        if as_json:
            result = m.chat(messages, **options)
            print(json.dumps(result.to_dict(), ensure_ascii=False, indent=2))
            return
        result = _stream_reply(m, messages, options)
    if result.finish_reason == "length":
        err.print("[yellow](stopped at --max-tokens)[/]")


def _stream_reply(m, messages: list[dict], options: dict):
    """Print a reply as it streams: reasoning dimmed on stderr, the answer on stdout."""
    result = None
    in_reasoning = False
    for delta in m.chat(messages, stream=True, **options):
        if delta.reasoning:
            in_reasoning = True
            err.print(delta.reasoning, style="dim", end="", markup=False)
        if delta.content:
            if in_reasoning:
                err.print()
                in_reasoning = False
            sys.stdout.write(delta.content)
            sys.stdout.flush()
        for call in delta.tool_calls:
            sys.stdout.write(f"\n[tool call] {call.name}({call.arguments})")
        if delta.result is not None:
            result = delta.result
    sys.stdout.write("\n")
    sys.stdout.flush()
    return result


@app.command()
def chat(
    model: str = ModelOpt,
    think: Optional[bool] = ThinkOpt,
    system: Optional[str] = typer.Option(None, "--system", "-s", help="A system message."),
    max_tokens: int = typer.Option(2048, "--max-tokens", "-n", min=1, help="Most tokens per answer."),
    thinking_budget: Optional[int] = typer.Option(None, "--thinking-budget", min=0, help="Most reasoning tokens (Qwen3)."),
    ctx: Optional[int] = CtxOpt,
    threads: Optional[int] = ThreadsOpt,
    engine: str = EngineOpt,
    dtype: str = DtypeOpt,
    quantization: Optional[str] = QuantOpt,
) -> None:
    """An interactive chat keeping history. Commands: /think /no_think /reset /exit."""
    with _load(model, ctx, threads, engine, dtype, quantization) as m:  # closed: engine threads end cleanly
        _chat_loop(m, system, think, max_tokens, thinking_budget)


def _chat_loop(m, system: str | None, think: bool | None, max_tokens: int, thinking_budget: int | None) -> None:
    """Read lines until /exit or end of input, answering each with the conversation so far."""
    base = [{"role": "system", "content": system}] if system else []
    history = list(base)
    err.print(f"[bold]{m.name}[/] ready. /think, /no_think, /reset, /exit; Ctrl-D quits.")
    while True:
        try:
            line = input(">>> ")
        except EOFError:
            err.print()
            return
        except KeyboardInterrupt:
            err.print()
            continue
        command = line.strip()
        if not command:
            continue
        if command in ("/exit", "/quit", "/bye"):
            return
        if command == "/reset":
            history = list(base)
            err.print("[dim]history cleared[/]")
            continue
        if command in ("/think", "/no_think"):
            think = command == "/think"
            err.print(f"[dim]thinking {'on' if think else 'off'}[/]")
            continue
        history.append({"role": "user", "content": line})
        try:
            result = _stream_reply(m, history, dict(max_tokens=max_tokens, think=think, thinking_budget=thinking_budget))
        except KeyboardInterrupt:
            err.print("[yellow](interrupted)[/]")
            history.pop()
            continue
        history.append(result.as_message())
        err.print(
            f"[dim]{result.usage.completion_tokens} tokens, {result.timings.decode_tps:.1f} tok/s, "
            f"first token {result.timings.ttft_s * 1000:.0f} ms, {result.finish_reason}[/]"
        )


@app.command()
def serve(
    model: str = ModelOpt,
    host: str = typer.Option("127.0.0.1", "--host", help="Address to bind (127.0.0.1 unless told otherwise)."),
    port: int = typer.Option(8000, "--port", "-p", min=1, max=65535),
    parallel: int = typer.Option(4, "--parallel", "-np", min=1, max=64, help="Requests decoded together."),
    ctx: Optional[int] = CtxOpt,
    threads: Optional[int] = ThreadsOpt,
    engine: str = EngineOpt,
    dtype: str = DtypeOpt,
    quantization: Optional[str] = QuantOpt,
    api_key: list[str] = typer.Option([], "--api-key", help="Accepted API key (repeatable)."),
    api_key_file: Optional[Path] = typer.Option(None, "--api-key-file", help="File of API keys, one per line."),
    rpm: Optional[int] = typer.Option(None, "--rate-limit-rpm", min=1, help="Requests per minute per key."),
    tpm: Optional[int] = typer.Option(None, "--rate-limit-tpm", min=1, help="Tokens per minute per key."),
    max_queue: int = typer.Option(64, "--max-queue", min=0, help="Requests waiting for a slot before 429."),
    max_body: int = typer.Option(1_000_000, "--max-body-bytes", min=1024, help="Largest request body."),
    max_tokens_cap: int = typer.Option(8192, "--max-tokens-cap", min=1, help="Largest max_tokens a request may ask."),
    cors: list[str] = typer.Option([], "--cors-origin", help="Allowed CORS origin (repeatable; none by default)."),
    log_prompts: bool = typer.Option(False, "--log-prompts", help="Log prompt text (off by default)."),
    effort_budgets: str = typer.Option("", "--reasoning-effort-budgets",
                                       help="Thinking budgets per reasoning_effort, e.g. low=512,medium=2048,high=none."),
) -> None:
    """Serve an OpenAI-compatible API (and a web chat at /) with continuous batching."""
    import logging

    import uvicorn

    from qwenkit import store
    from qwenkit.api import load
    from qwenkit.serve import ServeSettings, create_app
    from qwenkit.serve.settings import read_api_keys

    from qwenkit.chat.budget import parse_effort_budgets

    efforts = parse_effort_budgets(effort_budgets)
    keys = read_api_keys(api_key, api_key_file)
    local = store.resolve(model)  # fetch in the foreground, with progress, before binding the port
    from qwenkit.api import pick_engine

    if pick_engine(engine, local.format) == "transformers" and local.format == "gguf":
        from qwenkit.engines.transformers import convert_gguf

        err.print(f"preparing {local.name} for transformers (converted once, then reused)")
        convert_gguf(local.path)
    settings = ServeSettings(
        host=host, port=port, api_keys=keys, requests_per_minute=rpm, tokens_per_minute=tpm,
        max_body_bytes=max_body, max_tokens_cap=max_tokens_cap, cors_origins=tuple(cors), log_prompts=log_prompts,
    )
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    def load_model():
        m = load(model, n_ctx=ctx, n_threads=threads, n_parallel=parallel, max_waiting=max_queue, progress=False,
                 engine=engine, dtype=dtype, quantization=quantization)
        m.effort_budgets = efforts
        return m

    app_ = create_app(load_model, settings)
    where = f"http://{host}:{port}"
    err.print(f"serving [bold]{model}[/] on {where} (web chat at {where}/, API at {where}/v1)"
              + (f", {len(keys)} API key(s)" if keys else ", no API key required"))
    uvicorn.run(app_, host=host, port=port, log_level="warning", access_log=False)


def main() -> None:
    """Entry point: user-facing errors print one line and exit non-zero, never a traceback."""
    import logging

    try:  # typer vendors its own click (typer._click): click's exception classes do not catch its errors
        from typer._click import exceptions as click_exceptions
    except ImportError:
        from click import exceptions as click_exceptions

    # llama.cpp's own error lines would reach stderr through logging's last resort; the
    # QwenkitError message below carries the first of them
    logging.getLogger("qwenkit").addHandler(logging.NullHandler())
    try:
        code = app(standalone_mode=False)
    except typer.Abort:  # typer's own (its vendored click has none)
        err.print("aborted")
        sys.exit(130)
    except click_exceptions.ClickException as exc:
        if isinstance(exc, getattr(click_exceptions, "NoArgsIsHelpError", ())):
            exc.show()  # `qwenkit` alone: the help
        else:
            err.print(f"[red]error:[/] {escape(exc.format_message())}")
        sys.exit(exc.exit_code)
    except QwenkitError as exc:
        err.print(f"[red]error:[/] {escape(str(exc))}")
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)
    if isinstance(code, int) and code:  # typer.Exit(code) and Ctrl-C (130) come back as a return value
        sys.exit(code)
