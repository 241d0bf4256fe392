"""`/v1/chat/completions`: the request, the completion and its streamed chunks."""

from __future__ import annotations

import time
from typing import Any, Literal

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic.json_schema import JsonDict

from qwenkit.serve.protocol.common import (
    ChoiceLogprobs,
    Count,
    LoraScale,
    SamplingFields,
    TokenCount,
    TopLogprobs,
    UsageInfo,
)
from qwenkit.serve.protocol.messages import ChatMessage, NamedToolChoice, ResponseFormat, ToolDef

# "required" or a named tool choice needs tools (the name being one of them JSON Schema cannot state)
_TOOL_CHOICE_NEEDS_TOOLS: JsonDict = {
    "if": {
        "required": ["tool_choice"],
        "properties": {"tool_choice": {"not": {"anyOf": [{"enum": ["auto", "none"]}, {"type": "null"}]}}},
    },
    "then": {"required": ["tools"], "properties": {"tools": {"type": "array", "minItems": 1}}},
}


class ChatCompletionRequest(SamplingFields):
    model_config = ConfigDict(extra="ignore", strict=True, json_schema_extra=_TOOL_CHOICE_NEEDS_TOOLS)

    model: str | None = None
    lora: list[LoraScale] | None = None  # llama-server's field; `model` may name an adapter instead
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: TokenCount | None = None
    max_completion_tokens: TokenCount | None = None
    tools: list[ToolDef] | None = None
    tool_choice: Literal["auto", "none", "required"] | NamedToolChoice | None = Field(
        default=None, description='"required" or a named function need `tools`, and the name must be among them'
    )
    parallel_tool_calls: bool = True
    response_format: ResponseFormat | None = None
    chat_template_kwargs: dict[str, Any] | None = None
    enable_thinking: bool | None = None
    thinking_budget: Count | None = Field(
        default=None,
        validation_alias=AliasChoices("thinking_budget", "thinking_token_budget", "thinking_budget_tokens"),
    )
    reasoning_effort: Literal["none", "minimal", "low", "medium", "high"] | None = None
    logprobs: bool = False
    top_logprobs: TopLogprobs | None = None

    @field_validator("chat_template_kwargs")
    @classmethod
    def _template_kwargs(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        flag = (value or {}).get("enable_thinking")
        if flag is not None and not isinstance(flag, bool):  # else `thinking()` raises a 500 later
            raise ValueError("enable_thinking must be a boolean")
        return value

    @model_validator(mode="after")
    def _tool_choice_names_a_tool(self) -> ChatCompletionRequest:
        choice = self.tool_choice
        if (isinstance(choice, NamedToolChoice) or choice == "required") and not self.tools:
            raise ValueError("tool_choice requires tools")
        names = {t.function.name for t in self.tools or []}
        if isinstance(choice, NamedToolChoice) and choice.function.name not in names:
            raise ValueError(f"tool_choice names {choice.function.name!r}, which is not among the tools")
        return self

    def thinking(self) -> bool | None:
        flag = (self.chat_template_kwargs or {}).get("enable_thinking")
        if flag is not None and not isinstance(flag, bool):
            raise ValueError("chat_template_kwargs.enable_thinking must be a boolean")
        return self.enable_thinking if self.enable_thinking is not None else flag

    def limit(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens

    def logprob_count(self) -> int | None:
        """Alternatives per token when logprobs are asked for, else None."""
        return (self.top_logprobs or 0) if self.logprobs else None


class FunctionCallOut(BaseModel):
    name: str | None = None
    arguments: str | None = None


class ToolCallOut(BaseModel):
    index: int | None = None
    id: str | None = None
    type: Literal["function"] | None = None
    function: FunctionCallOut


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str | None = None
    reasoning_content: str | None = None
    reasoning: str | None = None  # the same text: clients disagree on the field name
    tool_calls: list[ToolCallOut] | None = None


class ChatChoice(BaseModel):
    index: int = 0
    message: AssistantMessage
    finish_reason: str | None
    logprobs: ChoiceLogprobs | None = None


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: list[ChatChoice]
    usage: UsageInfo


class DeltaMessage(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None
    reasoning_content: str | None = None
    reasoning: str | None = None
    tool_calls: list[ToolCallOut] | None = None


class ChunkChoice(BaseModel):
    index: int = 0
    delta: DeltaMessage
    finish_reason: str | None = None
    logprobs: ChoiceLogprobs | None = None


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: list[ChunkChoice]
    usage: UsageInfo | None = None
