"""`qwenkit run` and `qwenkit chat`: one prompt, or an interactive conversation."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import typer

from qwenkit.chat.media import LOCAL_POLICY, load_image
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
    ThinkOpt,
    ThreadsOpt,
    app,
    err,
    load_model,
    parse_lora,
    vllm_parallelism,
)
from qwenkit.errors import QwenkitError

LoraOpt = typer.Option(None, "--lora", help="A GGUF LoRA (qwenkit export lora) applied over the model.")
MmprojOpt = typer.Option(
    None, "--mmproj", help="A Qwen-VL GGUF's vision projector (llama.cpp); catalogue names bring their own."
)
ImageMaxTokensOpt = typer.Option(
    None, "--image-max-tokens", min=4, help="Most tokens one image may take (vision models; 28x28 px each)."
)


def user_message(text: str, images: list[Path]) -> dict[str, Any]:
    """A user message: the text, after its images (as Qwen-VL examples put them)."""
    if not images:
        return {"role": "user", "content": text}
    parts: list[dict[str, Any]] = [{"type": "image", "image": path} for path in images]
    return {"role": "user", "content": [*parts, {"type": "text", "text": text}]}


@app.command()
def run(
    prompt: str = typer.Argument(..., help="The prompt; '-' reads it from standard input."),
    model: str = ModelOpt,
    max_tokens: int = typer.Option(1024, "--max-tokens", "-n", min=1, help="Most tokens to generate."),
    temperature: float | None = typer.Option(None, "--temperature", min=0.0, help="Sampling temperature (0: greedy)."),
    seed: int | None = typer.Option(None, "--seed", help="Random seed for reproducible sampling."),
    system: str | None = typer.Option(None, "--system", "-s", help="A system message."),
    think: bool | None = ThinkOpt,
    thinking_budget: int | None = typer.Option(None, "--thinking-budget", min=0, help="Most reasoning tokens (Qwen3)."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object instead of streaming."),
    ctx: int | None = CtxOpt,
    threads: int | None = ThreadsOpt,
    engine: str = EngineOpt,
    dtype: str = DtypeOpt,
    quantization: str | None = QuantOpt,
    lora: str | None = LoraOpt,
    image: list[Path] = typer.Option([], "--image", "-i", help="An image file for a vision model (repeatable)."),
    image_max_tokens: int | None = ImageMaxTokensOpt,
    mmproj: Path | None = MmprojOpt,
    prefix_cache_tokens: int | None = PrefixCacheOpt,
    speculative: str = SpeculativeOpt,
    draft_max: int = DraftMaxOpt,
    tensor_parallel: int = TensorParallelOpt,
    pipeline_parallel: int = PipelineParallelOpt,
    data_parallel: int = DataParallelOpt,
    executor: str | None = ExecutorOpt,
) -> None:
    """Answer one prompt, streaming the answer to stdout (reasoning to stderr)."""
    text = sys.stdin.read() if prompt == "-" else prompt
    if not text.strip():
        raise QwenkitError("the prompt is empty")
    for path in image:  # a bad file fails now, before the model loads
        load_image(path, LOCAL_POLICY)
    messages = ([{"role": "system", "content": system}] if system else []) + [user_message(text, image)]
    adapters = parse_lora([f"lora={lora}"] if lora else [])
    options = dict(
        max_tokens=max_tokens,
        temperature=temperature,
        seed=seed,
        think=think,
        thinking_budget=thinking_budget,
        adapters=tuple((name, 1.0) for name in adapters),
    )
    parallelism = vllm_parallelism(tensor_parallel, pipeline_parallel, data_parallel, executor)
    with load_model(
        model,
        ctx,
        threads,
        engine,
        dtype,
        quantization,
        adapters,
        image_max_tokens,
        mmproj,
        parallelism,
        prefix_cache_tokens,
        {"speculative": speculative, "draft_max": draft_max},
    ) as m:  # closed: engine threads end cleanly
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
    think: bool | None = ThinkOpt,
    system: str | None = typer.Option(None, "--system", "-s", help="A system message."),
    max_tokens: int = typer.Option(2048, "--max-tokens", "-n", min=1, help="Most tokens per answer."),
    thinking_budget: int | None = typer.Option(None, "--thinking-budget", min=0, help="Most reasoning tokens (Qwen3)."),
    ctx: int | None = CtxOpt,
    threads: int | None = ThreadsOpt,
    engine: str = EngineOpt,
    dtype: str = DtypeOpt,
    quantization: str | None = QuantOpt,
    lora: str | None = LoraOpt,
    image_max_tokens: int | None = ImageMaxTokensOpt,
    mmproj: Path | None = MmprojOpt,
    prefix_cache_tokens: int | None = PrefixCacheOpt,
    speculative: str = SpeculativeOpt,
    draft_max: int = DraftMaxOpt,
) -> None:
    """An interactive chat keeping history. Commands: /image FILE /think /no_think /reset /exit."""
    adapters = parse_lora([f"lora={lora}"] if lora else [])
    with load_model(
        model,
        ctx,
        threads,
        engine,
        dtype,
        quantization,
        adapters,
        image_max_tokens,
        mmproj,
        None,
        prefix_cache_tokens,
        {"speculative": speculative, "draft_max": draft_max},
    ) as m:  # closed: threads end cleanly
        _chat_loop(m, system, think, max_tokens, thinking_budget, tuple((name, 1.0) for name in adapters))


def _chat_loop(
    m,
    system: str | None,
    think: bool | None,
    max_tokens: int,
    thinking_budget: int | None,
    adapters: tuple[tuple[str, float], ...] = (),
) -> None:
    """Read lines until /exit or end of input, answering each with the conversation so far."""
    base = [{"role": "system", "content": system}] if system else []
    history = list(base)
    err.print(f"[bold]{m.name}[/] ready. /image FILE, /think, /no_think, /reset, /exit; Ctrl-D quits.")
    images: list[Path] = []  # attached to the next message
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
        if command == "/reset":  # a fresh start: images attached for the next message go too
            history, dropped, images = list(base), len(images), []
            err.print(f"[dim]history cleared{f' ({dropped} attached image(s) dropped)' if dropped else ''}[/]")
            continue
        if command in ("/think", "/no_think"):
            think = command == "/think"
            err.print(f"[dim]thinking {'on' if think else 'off'}[/]")
            continue
        if command.startswith("/image"):
            path = Path(command.removeprefix("/image").strip()).expanduser()
            if not path.is_file():
                err.print(f"[red]no such file: {path}[/]")
                continue
            images.append(path)
            err.print(f"[dim]{path.name} attached to your next message ({len(images)} image(s))[/]")
            continue
        history.append(user_message(line, images))
        images = []
        try:
            options = dict(max_tokens=max_tokens, think=think, thinking_budget=thinking_budget, adapters=adapters)
            result = _stream_reply(m, history, options)
        except KeyboardInterrupt:
            err.print("[yellow](interrupted)[/]")
            history.pop()
            continue
        except QwenkitError as exc:  # a bad image, a text-only model...: say so and keep chatting
            err.print(f"[red]error:[/] {exc}")
            history.pop()
            continue
        history.append(result.as_message())
        err.print(
            f"[dim]{result.usage.completion_tokens} tokens, {result.timings.decode_tps:.1f} tok/s, "
            f"first token {result.timings.ttft_s * 1000:.0f} ms, {result.finish_reason}[/]"
        )
