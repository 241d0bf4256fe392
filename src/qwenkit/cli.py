"""The `qwenkit` command: pull, models, run, chat (one function per verb)."""

from __future__ import annotations

import json
import sys
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
    help="Run, chat with and serve the Qwen model family.",
)
err = Console(stderr=True, highlight=False)

ModelOpt = typer.Option("default", "--model", "-m", help="Model reference: a name, hf:OWNER/REPO[/FILE] or a .gguf path.")
CtxOpt = typer.Option(None, "--ctx", help="Context size in tokens (default: 8192, capped at the model's).")
ThreadsOpt = typer.Option(None, "--threads", "-t", help="CPU threads (default: all cores).")
ThinkOpt = typer.Option(None, "--think/--no-think", help="Qwen3 thinking on or off (default: the model's).")


def _load(model: str, ctx: int | None, threads: int | None):
    from qwenkit.api import load

    return load(model, n_ctx=ctx, n_threads=threads)


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
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object instead of streaming."),
    ctx: Optional[int] = CtxOpt,
    threads: Optional[int] = ThreadsOpt,
) -> None:
    """Answer one prompt, streaming the answer to stdout (reasoning to stderr)."""
    text = sys.stdin.read() if prompt == "-" else prompt
    if not text.strip():
        raise QwenkitError("the prompt is empty")
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": text}]
    m = _load(model, ctx, threads)
    options = dict(max_tokens=max_tokens, temperature=temperature, seed=seed, think=think)
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
    ctx: Optional[int] = CtxOpt,
    threads: Optional[int] = ThreadsOpt,
) -> None:
    """An interactive chat keeping history. Commands: /think /no_think /reset /exit."""
    m = _load(model, ctx, threads)
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
            result = _stream_reply(m, history, dict(max_tokens=max_tokens, think=think))
        except KeyboardInterrupt:
            err.print("[yellow](interrupted)[/]")
            history.pop()
            continue
        history.append(result.as_message())
        err.print(
            f"[dim]{result.usage.completion_tokens} tokens, {result.timings.decode_tps:.1f} tok/s, "
            f"first token {result.timings.ttft_s * 1000:.0f} ms, {result.finish_reason}[/]"
        )


def main() -> None:
    """Entry point: user-facing errors print one line and exit non-zero, never a traceback."""
    import click

    try:
        app(standalone_mode=False)
    except click.exceptions.Abort:
        err.print("aborted")
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except QwenkitError as exc:
        err.print(f"[red]error:[/] {escape(str(exc))}")
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)
