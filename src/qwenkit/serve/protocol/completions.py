"""`/v1/completions`: the request (one prompt, text or token ids) and the completion."""

from __future__ import annotations

import time
from typing import Annotated, Literal

from pydantic import BaseModel, BeforeValidator, Field, TypeAdapter, WithJsonSchema

from qwenkit.serve.protocol.common import (
    ChoiceCount,
    CompletionLogprobs,
    LoraScale,
    SamplingFields,
    TokenCount,
    TokenId,
    TopLogprobs,
    UsageInfo,
)


def _one_prompt(value: object) -> object:
    """One prompt in a list (the schema allows no more) is that prompt."""
    if isinstance(value, list) and len(value) == 1 and isinstance(value[0], (str, list)):
        return value[0]
    return value


# The shapes a completion prompt is sent in: text or token ids, bare or as a one-prompt list. The
# validator unwraps the list, so the field holds text or token ids; the schema states all four.
_PromptShapes = (
    Annotated[str, Field(min_length=1)]
    | Annotated[list[TokenId], Field(min_length=1)]
    | Annotated[list[Annotated[str, Field(min_length=1)]], Field(min_length=1, max_length=1)]
    | Annotated[list[Annotated[list[TokenId], Field(min_length=1)]], Field(min_length=1, max_length=1)]
)


Prompt = Annotated[
    Annotated[str, Field(min_length=1)] | Annotated[list[TokenId], Field(min_length=1)],
    WithJsonSchema(TypeAdapter(_PromptShapes).json_schema()),
    BeforeValidator(_one_prompt),
]


class CompletionRequest(SamplingFields):
    model: str | None = None
    lora: list[LoraScale] | None = None  # llama-server's field; `model` may name an adapter instead
    prompt: Prompt = Field(description="one prompt: text or token ids")
    max_tokens: TokenCount | None = Field(default=None, description="default: 16 (or the server's cap if lower)")
    echo: bool = False
    logprobs: TopLogprobs | None = None
    best_of: ChoiceCount | None = Field(default=None, description="choices sampled, the n likeliest returned")


class TextChoice(BaseModel):
    index: int = 0
    text: str
    finish_reason: str | None
    logprobs: CompletionLogprobs | None = None


class Completion(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: list[TextChoice]
    usage: UsageInfo | None = None
