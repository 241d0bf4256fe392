"""What a chat turn returns: streamed deltas, and the finished result with usage and timings."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from qwenkit.engines.base import TokenLogprob


@dataclass
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    reasoning_tokens: int = 0
    cached_prompt_tokens: int = 0
    accepted_prediction_tokens: int = 0  # speculation: drafted tokens the output kept
    rejected_prediction_tokens: int = 0  # drafted tokens verified and dropped

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass
class Timings:
    ttft_s: float = 0.0  # request start to first generated token
    total_s: float = 0.0
    decode_tokens_per_s: float = 0.0  # tokens after the first, over the time after the first

    @property
    def decode_tps(self) -> float:
        return self.decode_tokens_per_s


@dataclass
class ChatResult:
    """A finished turn: the answer apart from the reasoning, tool calls, and honest accounting."""

    model: str
    content: str
    reasoning: str | None
    tool_calls: list[Any] = field(default_factory=list)
    finish_reason: str = "stop"
    usage: Usage = field(default_factory=Usage)
    timings: Timings = field(default_factory=Timings)
    logprobs: list[TokenLogprob] | None = None  # per sampled token, when asked for
    prompt_logprobs: list[TokenLogprob | None] | None = None  # per prompt token (None for the first)

    @property
    def text(self) -> str:
        return self.content

    def as_message(self) -> dict[str, Any]:
        """The assistant message to append to a conversation's history."""
        message: dict[str, Any] = {"role": "assistant", "content": self.content}
        if self.reasoning:
            message["reasoning_content"] = self.reasoning
        if self.tool_calls:
            message["tool_calls"] = [call.to_openai() for call in self.tool_calls]
        return message

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "text": self.content,
            "reasoning": self.reasoning,
            "tool_calls": [call.to_openai() for call in self.tool_calls],
            "finish_reason": self.finish_reason,
            "usage": {**asdict(self.usage), "total_tokens": self.usage.total_tokens},
            "timings": asdict(self.timings),
        }


@dataclass
class ChatDelta:
    """One streamed piece of a turn; the last one carries `finish_reason` and the `result`."""

    content: str = ""
    reasoning: str = ""
    tool_calls: list[Any] = field(default_factory=list)  # completed calls (`chat.ToolCall`)
    finish_reason: str | None = None
    result: ChatResult | None = None
    logprobs: list[TokenLogprob] = field(default_factory=list)  # of this delta's sampled tokens, when asked for
    prompt_logprobs: list[TokenLogprob | None] | None = None  # on the first delta, when asked for
    index: int = 0  # which choice of an n > 1 turn
    tool_call_parts: list[Any] = field(default_factory=list)  # calls as they stream (`chat.ToolCallPart`)
