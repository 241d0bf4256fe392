"""`qwenkit loadtest`: drive OpenAI-compatible servers with the official async client.

For each concurrency level, that many workers send chat completions back to back until
`requests` have been sent or `duration_s` has passed (in-flight requests then finish). Every
request ends in one outcome: "ok" (a finish reason came back), "cancelled" (the client closed
the stream on purpose after a few chunks: `cancel_fraction` of the requests, evenly spread), or
an error kind: "http_<status>", "timeout", "connection_error", "cut_stream" (the stream ended or
broke without a finish reason) or "stream_error" (the server sent an error event). With several
servers, each level runs on every server in turn, alternating the order level by level, so drift
in the machine falls on all.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import openai
from openai import AsyncOpenAI

from qwenkit.bench.stats import percentiles
from qwenkit.errors import QwenkitError

DEFAULT_PROMPTS = (
    "Write a detailed essay on the history of the printing press.",
    "Explain, step by step, how a compiler turns source code into machine code.",
    "Describe a walk through a busy market in a city of your choice, in detail.",
    "Write a long story about a robot that learns to paint.",
    "Explain the water cycle to a ten year old, with many examples.",
    "Write a tutorial on sorting algorithms with Python examples.",
    "Describe the life of a lighthouse keeper over one year.",
    "Write a detailed guide to planting a vegetable garden.",
)
CANCEL_AFTER_CHUNKS = 3


@dataclass(frozen=True)
class LoadConfig:
    urls: tuple[str, ...]
    labels: tuple[str, ...] = ()
    concurrency: tuple[int, ...] = (1, 4, 8, 16, 32)
    requests: int = 64  # per level and server
    duration_s: float = 120.0  # per level and server: no new request after this
    max_tokens: int = 128
    prompts: tuple[str, ...] = DEFAULT_PROMPTS
    stream: bool = False
    cancel_fraction: float = 0.0
    api_key: str | None = None
    model: str | None = None  # None: the first model the server lists
    timeout_s: float = 300.0  # per request
    temperature: float = 0.0

    def __post_init__(self) -> None:
        if not self.urls:
            raise QwenkitError("give at least one server URL")
        if self.labels and len(self.labels) != len(self.urls):
            raise QwenkitError(f"--label given {len(self.labels)} time(s) for {len(self.urls)} URL(s)")
        if not self.concurrency or min(self.concurrency) < 1:
            raise QwenkitError("--concurrency takes levels of at least 1, e.g. 1,4,8")
        if self.requests < 1 or self.duration_s <= 0 or self.max_tokens < 1 or self.timeout_s <= 0:
            raise QwenkitError("--requests, --duration, --max-tokens and --timeout must be positive")
        if not 0 <= self.cancel_fraction <= 1:
            raise QwenkitError("--cancel-fraction must be between 0 and 1")
        if self.cancel_fraction and not self.stream:
            raise QwenkitError("--cancel-fraction cancels streams midway: it needs --stream")
        if not self.prompts:
            raise QwenkitError("no prompts to send")
        for url in self.urls:
            api_base(url)  # a malformed URL is refused before anything runs

    def label(self, i: int) -> str:
        return self.labels[i] if self.labels else self.urls[i]


def api_base(url: str) -> str:
    """A server address as the OpenAI client wants it: ending in /v1."""
    base = url.rstrip("/")
    if not base.startswith(("http://", "https://")):
        raise QwenkitError(f"not an http(s) URL: {url!r}")
    return base if base.endswith("/v1") else f"{base}/v1"


def read_prompts(path: Path) -> tuple[str, ...]:
    """One prompt per non-blank line."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise QwenkitError(f"cannot read the prompt file {path}: {exc}") from None
    prompts = tuple(line.strip() for line in lines if line.strip())
    if not prompts:
        raise QwenkitError(f"the prompt file {path} has no prompts (one per line)")
    return prompts


@dataclass
class Outcome:
    """How one request went; times in seconds from its start."""

    kind: str
    tokens: int = 0
    ttft_s: float | None = None
    e2e_s: float | None = None
    gaps_s: list[float] = field(default_factory=list)  # between streamed chunks that carried text


def _error_kind(exc: Exception) -> str:
    if isinstance(exc, openai.APITimeoutError):
        return "timeout"
    if isinstance(exc, openai.APIStatusError):
        return f"http_{exc.status_code}"
    if isinstance(exc, openai.APIConnectionError):
        return "connection_error"
    return "stream_error"  # an error event inside a 200 stream


async def one_request(
    client: AsyncOpenAI, model: str, prompt: str, config: LoadConfig, *, cancel: bool, system: str | None = None
) -> Outcome:
    """Send one chat completion (after `system`, if given) and classify how it ended."""
    started = time.perf_counter()
    messages: list[Any] = [{"role": "system", "content": system}] if system else []
    messages.append({"role": "user", "content": prompt})
    try:
        if not config.stream:
            reply = await client.chat.completions.create(
                model=model, messages=messages, max_tokens=config.max_tokens, temperature=config.temperature
            )
            tokens = reply.usage.completion_tokens if reply.usage else 0
            return Outcome("ok", tokens=tokens, e2e_s=time.perf_counter() - started)
        return await _streamed(client, model, messages, config, cancel, started)
    except openai.APIError as exc:
        return Outcome(_error_kind(exc))


async def _streamed(
    client: AsyncOpenAI, model: str, messages: list[Any], config: LoadConfig, cancel: bool, started: float
) -> Outcome:
    out = Outcome("cut_stream")
    stream = await client.chat.completions.create(
        model=model,
        messages=messages,
        max_tokens=config.max_tokens,
        temperature=config.temperature,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks, last, finished, usage_tokens = 0, started, False, None
    try:
        async for chunk in stream:
            now = time.perf_counter()
            if chunk.usage is not None:
                usage_tokens = chunk.usage.completion_tokens
            for choice in chunk.choices:
                delta = choice.delta
                text = (delta.content or "") + (getattr(delta, "reasoning_content", None) or "")
                if text:
                    if out.ttft_s is None:
                        out.ttft_s = now - started
                    else:
                        out.gaps_s.append(now - last)
                    last = now
                    chunks += 1
                finished = finished or choice.finish_reason is not None
            if cancel and chunks >= CANCEL_AFTER_CHUNKS and not finished:
                out.kind, out.tokens = "cancelled", chunks
                return out
    except (httpx.TimeoutException, openai.APITimeoutError):  # mid-stream, httpx's own errors come through unwrapped
        out.kind, out.tokens = "timeout", chunks
        return out
    except (httpx.HTTPError, openai.APIConnectionError):
        out.kind, out.tokens = "cut_stream", chunks
        return out
    except openai.APIError as exc:
        out.kind, out.tokens = _error_kind(exc), chunks
        return out
    finally:
        await stream.close()  # leaving early closes the connection: the server sees a cancelled request
    out.tokens = usage_tokens if usage_tokens is not None else chunks
    if finished:
        out.kind, out.e2e_s = "ok", time.perf_counter() - started
    return out


def summarize(concurrency: int, outcomes: Sequence[Outcome], wall_s: float) -> dict[str, Any]:
    """One level's figures: throughput, latency percentiles and outcomes by kind."""
    kinds = Counter(o.kind for o in outcomes)
    ok = [o for o in outcomes if o.kind == "ok"]
    answered = [o for o in outcomes if o.kind in ("ok", "cancelled")]
    tpot = [(o.e2e_s - o.ttft_s) / (o.tokens - 1) for o in ok if o.ttft_s is not None and o.e2e_s and o.tokens > 1]
    return {
        "concurrency": concurrency,
        "requests_sent": len(outcomes),
        "completed": kinds["ok"],
        "cancelled_by_client": kinds["cancelled"],
        "errors": {k: n for k, n in sorted(kinds.items()) if k not in ("ok", "cancelled")},
        "wall_s": round(wall_s, 3),
        "generated_tokens": sum(o.tokens for o in answered),
        "tokens_per_s": round(sum(o.tokens for o in answered) / wall_s, 3) if wall_s > 0 else 0.0,
        "requests_per_s": round(len(ok) / wall_s, 4) if wall_s > 0 else 0.0,
        "ttft_s": percentiles([o.ttft_s for o in answered if o.ttft_s is not None]),
        "e2e_latency_s": percentiles([o.e2e_s for o in ok if o.e2e_s is not None]),
        "inter_token_latency_s": percentiles([g for o in answered for g in o.gaps_s]),
        "time_per_output_token_s": percentiles(tpot),
    }


async def run_level(
    base: str, model: str, concurrency: int, config: LoadConfig, advance: Callable[[int], None]
) -> dict[str, Any]:
    """`concurrency` workers until `requests` are sent or `duration_s` has passed; the level's summary."""
    client = AsyncOpenAI(base_url=base, api_key=config.api_key or "none", max_retries=0, timeout=config.timeout_s)
    outcomes: list[Outcome] = []
    started = time.perf_counter()
    deadline = started + config.duration_s
    sent = [0]

    async def worker() -> None:
        while sent[0] < config.requests and time.perf_counter() < deadline:
            i = sent[0]
            sent[0] += 1
            cancel = int((i + 1) * config.cancel_fraction) > int(i * config.cancel_fraction)  # evenly spread
            prompt = config.prompts[i % len(config.prompts)]
            outcomes.append(await one_request(client, model, prompt, config, cancel=cancel))
            advance(1)

    try:
        await asyncio.gather(*(worker() for _ in range(concurrency)))
    finally:
        await client.close()
    advance(config.requests - sent[0])  # what the deadline left unsent
    return summarize(concurrency, outcomes, time.perf_counter() - started)


async def served_model(base: str, config: LoadConfig) -> str:
    """The model to ask for: the configured one, else the first one the server lists."""
    if config.model:
        return config.model
    client = AsyncOpenAI(base_url=base, api_key=config.api_key or "none", max_retries=0, timeout=30)
    try:
        models = await client.models.list()
    except openai.APIStatusError as exc:
        raise QwenkitError(f"{base}/models answered HTTP {exc.status_code}; pass --model") from None
    except openai.APIError as exc:
        raise QwenkitError(f"cannot reach {base}: {exc.message}") from None
    finally:
        await client.close()
    if not models.data:
        raise QwenkitError(f"{base}/models lists no model; pass --model")
    return models.data[0].id


async def run_loadtest(config: LoadConfig, advance: Callable[[int], None] = lambda _: None) -> dict[str, Any]:
    """Every level on every server; one JSON-ready object with a `levels` list per server."""
    bases = [api_base(u) for u in config.urls]
    models = [await served_model(b, config) for b in bases]
    servers: list[dict[str, Any]] = [
        {"label": config.label(i), "url": config.urls[i], "model": models[i], "levels": []} for i in range(len(bases))
    ]
    for n, level in enumerate(config.concurrency):
        order = list(range(len(bases)))
        for i in order if n % 2 == 0 else reversed(order):
            servers[i]["levels"].append(await run_level(bases[i], models[i], level, config, advance))
    return {
        "max_tokens": config.max_tokens,
        "stream": config.stream,
        "cancel_fraction": config.cancel_fraction,
        "requests_per_level": config.requests,
        "duration_s_per_level": config.duration_s,
        "temperature": config.temperature,
        "prompts": len(config.prompts),
        "servers": servers,
    }


def total_steps(config: LoadConfig) -> int:
    return len(config.urls) * len(config.concurrency) * config.requests
