"""Where answers come from: a model loaded in this process, or any OpenAI-compatible server."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from qwenkit.errors import QwenkitError
from qwenkit.evals.published import model_key
from qwenkit.store.gguf_header import quant


@dataclass(frozen=True)
class Generation:
    """One answer: its visible content, its reasoning (if any), and how it ended."""

    content: str
    reasoning: str | None
    finish_reason: str
    completion_tokens: int


@dataclass(frozen=True)
class Request:
    """What is asked of the model for one sample; `sampling` holds explicit values only."""

    prompt: str
    max_tokens: int
    think: bool | None
    thinking_budget: int | None
    sampling: dict[str, Any]
    seed: int | None = None


class Backend(Protocol):
    def describe(self) -> dict[str, Any]: ...

    async def generate(self, request: Request) -> Generation: ...

    def close(self) -> None: ...


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def file_record(path: Path | None) -> dict[str, Any]:
    """The model file a result belongs to: path, size and sha256."""
    if path is None:
        return {"file": None, "sha256": None}
    if not path.is_file():
        raise QwenkitError(f"model file not found: {path}")
    return {"file": str(path), "size": path.stat().st_size, "sha256": file_sha256(path)}


class InProcess:
    """A model loaded with `qwenkit.load`; concurrent requests are decoded together by its engine."""

    def __init__(self, ref: str, *, engine: str, concurrency: int, n_ctx: int | None, threads: int | None) -> None:
        from qwenkit.api import load
        from qwenkit.catalog.fetch import resolve

        self.local = resolve(ref)
        self.engine_name = engine
        self.model = load(ref, engine=engine, n_parallel=concurrency, n_ctx=n_ctx, n_threads=threads)

    def describe(self) -> dict[str, Any]:
        path = self.local.path if self.local.path.is_file() else None
        return {
            "backend": "in-process",
            "engine": type(self.model.engine).__name__,
            "model": self.local.name,
            "model_key": model_key(self.local.name),
            "quantization": self.local.quant,
            "template": self.model.template.name,
            **file_record(path),
        }

    async def generate(self, request: Request) -> Generation:
        result = await self.model.achat(
            [{"role": "user", "content": request.prompt}],
            max_tokens=request.max_tokens,
            think=request.think,
            thinking_budget=request.thinking_budget,
            seed=request.seed,
            **request.sampling,
        )
        return Generation(result.content, result.reasoning, result.finish_reason, result.usage.completion_tokens)

    def close(self) -> None:
        self.model.close()


class OpenAIServer:
    """Any OpenAI-compatible server (qwenkit serve, llama-server, vLLM...) through the official client.

    Thinking, its budget and the sampling fields the OpenAI API lacks go in the request body in the
    spellings these servers read (`chat_template_kwargs.enable_thinking`, `thinking_budget`,
    `top_k`, `min_p`, `repetition_penalty` and llama-server's `repeat_penalty`).
    """

    def __init__(self, url: str, *, model: str | None, model_file: Path | None, timeout: float) -> None:
        from openai import AsyncOpenAI, OpenAI

        base = url.rstrip("/")
        self.base_url = base if base.endswith("/v1") else base + "/v1"
        api_key = os.environ.get("OPENAI_API_KEY") or "none"
        try:
            listed = [m.id for m in OpenAI(base_url=self.base_url, api_key=api_key, timeout=30).models.list()]
        except Exception as exc:  # the client's connection, status and parsing errors alike
            raise QwenkitError(f"cannot list models at {self.base_url}: {exc}") from None
        if model is None and not listed:
            raise QwenkitError(f"{self.base_url} serves no model")
        self.model_id = model or listed[0]
        self.model_file = model_file
        self.client = AsyncOpenAI(base_url=self.base_url, api_key=api_key, timeout=timeout, max_retries=2)

    def describe(self) -> dict[str, Any]:
        name = self.model_file.name if self.model_file else self.model_id
        return {
            "backend": "openai-compatible server",
            "url": self.base_url,
            "engine": "server",
            "model": self.model_id,
            "model_key": model_key(name),
            "quantization": quant(self.model_file) if self.model_file else None,
            "template": "the server's",
            **file_record(self.model_file),
        }

    async def generate(self, request: Request) -> Generation:
        sampling = dict(request.sampling)
        extra: dict[str, Any] = {key: sampling.pop(key) for key in ("top_k", "min_p") if key in sampling}
        if "repetition_penalty" in sampling:
            extra["repetition_penalty"] = extra["repeat_penalty"] = sampling.pop("repetition_penalty")
        if request.think is not None:
            extra["chat_template_kwargs"] = {"enable_thinking": request.think}
        if request.thinking_budget is not None:
            extra["thinking_budget"] = request.thinking_budget
        try:
            options: dict[str, Any] = {**sampling, "extra_body": extra or None}
            if request.seed is not None:
                options["seed"] = request.seed
            reply = await self.client.chat.completions.create(
                model=self.model_id,
                messages=[{"role": "user", "content": request.prompt}],
                max_tokens=request.max_tokens,
                stream=False,
                **options,
            )
        except Exception as exc:  # one line, whatever the client raised
            raise QwenkitError(f"{self.base_url}: {exc}") from None
        choice = reply.choices[0]
        message = choice.message
        reasoning = getattr(message, "reasoning_content", None) or (message.model_extra or {}).get("reasoning_content")
        tokens = reply.usage.completion_tokens if reply.usage else 0
        return Generation(message.content or "", reasoning, choice.finish_reason or "stop", tokens)

    def close(self) -> None:
        pass
