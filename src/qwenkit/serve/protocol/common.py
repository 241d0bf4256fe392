"""Parts the request and response shapes share: strict request models, integer types, sampling
fields, usage and logprobs.
"""

from __future__ import annotations

import uuid
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator


def _whole(value: object) -> object:
    """JSON Schema's integers include 2.0: accept a float without a fraction as an integer."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


MAX_N = 128  # the most any server allows; each server's own cap (--max-n) is in its OpenAPI schema


MAX_TOP_LOGPROBS = 20


# Integers that accept a float without a fraction. Type aliases (not built by a function) so the
# type checker sees `int`; in each, the bounds come before the validator, or the schema loses them.
Int = Annotated[int, BeforeValidator(_whole)]


Count = Annotated[int, Field(ge=0), BeforeValidator(_whole)]


TokenId = Count  # a vocabulary index (the vocabulary bound is in the OpenAPI schema)


TokenCount = Annotated[int, Field(ge=1), BeforeValidator(_whole)]  # a max_tokens


ChoiceCount = Annotated[int, Field(ge=1, le=MAX_N), BeforeValidator(_whole)]


TopLogprobs = Annotated[int, Field(ge=0, le=MAX_TOP_LOGPROBS), BeforeValidator(_whole)]


class RequestModel(BaseModel):
    # Unknown fields are ignored, as OpenAI clients send extensions we need not understand. Types
    # are strict: "3" is not a number, 1 is not true (what the schema says is what is accepted).
    model_config = ConfigDict(extra="ignore", strict=True)


class StreamOptions(RequestModel):
    include_usage: bool = False


Stop = Annotated[str, Field(min_length=1)]


TokenKey = Annotated[str, Field(pattern=r"^(0|[1-9][0-9]{0,8})$")]  # the vocabulary bound is in the OpenAPI schema


class LoraScale(RequestModel):
    """llama-server's per-request adapter choice: an adapter by position (`--lora` order), and its scale."""

    id: int
    scale: float = Field(default=1.0, allow_inf_nan=False)


class SamplingFields(RequestModel):
    """Sampling fields shared by chat and text completions (OpenAI's plus common extensions)."""

    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    top_k: Count | None = None
    min_p: float | None = Field(default=None, ge=0, le=1)
    repetition_penalty: float | None = Field(default=None, gt=0, le=10)
    presence_penalty: float | None = Field(default=None, ge=-2, le=2)
    frequency_penalty: float | None = Field(default=None, ge=-2, le=2)
    seed: Int | None = None
    stop: Stop | list[Stop] | None = Field(default=None, max_length=16)
    n: ChoiceCount = Field(default=1, description="choices to sample (at most the server's --max-n)")
    logit_bias: dict[TokenKey, Annotated[float, Field(ge=-100, le=100)]] | None = Field(
        default=None, description="token id (a vocabulary index) -> bias"
    )
    speculative: bool | Annotated[int, Field(ge=0, le=64)] | None = Field(
        default=None,
        description="qwenkit: speculative decoding from the context (lossless): false turns it off, "
        "true on, a number is the most tokens drafted per step (0: off); default: the server's --speculative",
    )
    user: str | None = Field(default=None, max_length=256)
    stream: bool = False
    stream_options: StreamOptions | None = None

    @field_validator("stop")
    @classmethod
    def _stops(cls, value: str | list[str] | None) -> list[str]:
        return [value] if isinstance(value, str) else list(value or [])

    def sampling(self) -> dict[str, Any]:
        """The fields as engine sampling settings (None: let Qwen's defaults decide)."""
        return {
            "temperature": self.temperature,
            "top_p": self.top_p,
            "top_k": self.top_k,
            "min_p": self.min_p,
            "repetition_penalty": self.repetition_penalty,
            "presence_penalty": self.presence_penalty,
            "frequency_penalty": self.frequency_penalty,
            "seed": self.seed,
            "stop": tuple(self.stop or ()),
            "logit_bias": {int(k): v for k, v in self.logit_bias.items()} if self.logit_bias else None,
            **self._speculation(),
        }

    def _speculation(self) -> dict[str, Any]:
        value = self.speculative
        if value is None or isinstance(value, bool):
            return {"speculative": value}
        return {"speculative": value > 0, "draft_max": value}


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


class CompletionTokensDetails(BaseModel):
    reasoning_tokens: int = 0
    accepted_prediction_tokens: int = 0  # speculation: drafted tokens the output kept
    rejected_prediction_tokens: int = 0  # drafted tokens verified and dropped


class PromptTokensDetails(BaseModel):
    cached_tokens: int = 0


class UsageInfo(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    completion_tokens_details: CompletionTokensDetails = Field(default_factory=CompletionTokensDetails)
    prompt_tokens_details: PromptTokensDetails = Field(default_factory=PromptTokensDetails)


class TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int] | None = None


class ChatTokenLogprob(TopLogprob):
    top_logprobs: list[TopLogprob] = Field(default_factory=list)


class ChoiceLogprobs(BaseModel):
    content: list[ChatTokenLogprob] | None = None
    refusal: list[ChatTokenLogprob] | None = None


class CompletionLogprobs(BaseModel):
    tokens: list[str] = Field(default_factory=list)
    token_logprobs: list[float | None] = Field(default_factory=list)
    top_logprobs: list[dict[str, float] | None] = Field(default_factory=list)
    text_offset: list[int] = Field(default_factory=list)
