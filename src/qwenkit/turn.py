"""One chat turn between the chat layer and an engine: the prepared request and its decoder.

`PreparedTurn` is what `Model.prepare` renders; `TurnDecoder` turns the engine's chunks back into
reasoning/answer/tool-call deltas. Both are shared by the Python API (`model.py`, `streaming.py`)
and the server.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from qwenkit.chat import Delta, OutputParser
from qwenkit.engines.base import Adapters, Chunk, FinishReason, ImageInput, SamplingParams, TokenLogprob
from qwenkit.results import ChatDelta, ChatResult, Timings, Usage


@dataclass(frozen=True)
class PreparedTurn:
    """A conversation rendered to token ids, with how to sample and how to read the output."""

    prompt: list[int]
    params: SamplingParams
    thinking: bool
    starts_in_thinking: bool
    tool_format: str | None
    tools: Sequence[Mapping[str, Any]] | None
    raw: bool = False  # plain completion: the output is all content, nothing is parsed
    thinking_budget: int | None = None  # reasoning tokens before thinking is closed
    adapters: Adapters = ()  # LoRA adapters (name, scale) loaded on the engine; () is the base model
    images: tuple[ImageInput, ...] = ()  # one per image slot of `prompt`, in order


class TurnDecoder:
    """Turns engine chunks into reasoning/answer/tool-call deltas and keeps usage and timings."""

    def __init__(self, model_name: str, turn: PreparedTurn, think_ids: tuple[int, int] | None) -> None:
        self.model_name = model_name
        self.turn = turn
        self.parser = None if turn.raw else OutputParser(turn.starts_in_thinking, turn.tool_format, turn.tools)
        self._think_open: int | None = think_ids[0] if think_ids else None
        self._think_close: int | None = think_ids[1] if think_ids else None
        self._in_thinking = turn.starts_in_thinking
        self.usage = Usage(prompt_tokens=len(turn.prompt))
        self.content: list[str] = []
        self.reasoning: list[str] = []
        self.tool_calls: list[Any] = []
        self.started = time.perf_counter()
        self._first: float | None = None
        self.logprobs: list[TokenLogprob] | None = [] if turn.params.logprobs is not None else None
        self.prompt_logprobs: list[TokenLogprob | None] | None = None

    def feed(self, chunk: Chunk) -> ChatDelta:
        if chunk.token_ids and self._first is None:
            self._first = time.perf_counter()
        self._count(chunk.token_ids)
        parsed = Delta(content=chunk.text) if self.parser is None else self.parser.feed(chunk.text)
        if chunk.finish_reason is not None and self.parser is not None:
            last = self.parser.finish()
            parsed.reasoning += last.reasoning
            parsed.content += last.content
            parsed.tool_calls += last.tool_calls
            parsed.tool_call_parts += last.tool_call_parts
            parsed.unfinished_call = last.unfinished_call
        # a call cut off after it began to stream: its text is the result's content, not the stream's
        self.content.append(parsed.content + parsed.unfinished_call)
        self.reasoning.append(parsed.reasoning)
        self.tool_calls += parsed.tool_calls
        delta = ChatDelta(
            parsed.content,
            parsed.reasoning,
            parsed.tool_calls,
            index=chunk.index,
            tool_call_parts=parsed.tool_call_parts,
        )
        if chunk.logprobs and self.logprobs is not None:
            delta.logprobs = chunk.logprobs
            self.logprobs += chunk.logprobs
        if chunk.prompt_logprobs is not None:
            self.prompt_logprobs = delta.prompt_logprobs = chunk.prompt_logprobs
        if chunk.finish_reason is not None:
            self.usage.cached_prompt_tokens = chunk.cached_prompt_tokens
            self.usage.accepted_prediction_tokens = chunk.accepted_draft_tokens
            self.usage.rejected_prediction_tokens = chunk.rejected_draft_tokens
            if chunk.prompt_tokens:  # the engine's count, each image's slot expanded to its embeddings
                self.usage.prompt_tokens = chunk.prompt_tokens
            delta.finish_reason = self._finish_reason(chunk.finish_reason, chunk.error)
            delta.result = self.result(delta.finish_reason)
        return delta

    def _count(self, ids: Sequence[int]) -> None:
        for token in ids:
            self.usage.completion_tokens += 1
            # as in the reasoning parser: only a <think> that starts the output opens reasoning;
            # one in the answer is text, and thinking never reopens after </think>
            if token == self._think_open and self.usage.completion_tokens == 1 and self.parser is not None:
                self._in_thinking = True
            if self._in_thinking:
                self.usage.reasoning_tokens += 1
            if token == self._think_close:
                self._in_thinking = False

    def _finish_reason(self, reason: FinishReason, error: str | None) -> str:
        if error:
            return "error"
        if reason == "stop" and self.tool_calls:
            return "tool_calls"
        return reason

    def result(self, finish_reason: str) -> ChatResult:
        end = time.perf_counter()
        first = self._first or end
        decoded = max(self.usage.completion_tokens - 1, 0)
        reasoning = "".join(self.reasoning)
        return ChatResult(
            model=self.model_name,
            content="".join(self.content),
            reasoning=reasoning or None,
            tool_calls=list(self.tool_calls),
            finish_reason=finish_reason,
            usage=self.usage,
            logprobs=self.logprobs,
            prompt_logprobs=self.prompt_logprobs,
            timings=Timings(
                ttft_s=first - self.started,
                total_s=end - self.started,
                decode_tokens_per_s=decoded / (end - first) if end > first and decoded else 0.0,
            ),
        )
