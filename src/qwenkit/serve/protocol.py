"""OpenAI-compatible request and response shapes (typed, validated; no serving logic here)."""

from __future__ import annotations

import time
import uuid
from typing import Annotated, Any, Literal

from pydantic import (
    AliasChoices,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    TypeAdapter,
    WithJsonSchema,
    field_validator,
    model_validator,
)
from pydantic.json_schema import JsonDict


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


class _Request(BaseModel):
    # Unknown fields are ignored, as OpenAI clients send extensions we need not understand. Types
    # are strict: "3" is not a number, 1 is not true (what the schema says is what is accepted).
    model_config = ConfigDict(extra="ignore", strict=True)


class ContentPart(_Request):
    type: Literal["text"] = Field(description="a text part (images go in user messages)")
    text: str


Content = str | list[ContentPart]


class ImageUrl(_Request):
    url: str = Field(
        min_length=1,
        description="a data: URI (base64 PNG, JPEG, WebP, GIF...); an http(s) URL when the server runs with "
        "--allow-remote-media; a path or file:// URL under the server's --media-dir",
    )
    detail: Literal["auto", "low", "high"] | None = Field(
        default=None, description="accepted; the size bound is the server's --image-max-tokens"
    )


class ImagePart(_Request):
    type: Literal["image_url"]
    image_url: ImageUrl


UserContent = str | list[Annotated[ContentPart | ImagePart, Field(discriminator="type")]]


JsonObjectText = Annotated[
    str, Field(json_schema_extra={"contentMediaType": "application/json", "contentSchema": {"type": "object"}})
]


class FunctionCall(_Request):
    name: str = Field(min_length=1)
    arguments: JsonObjectText | dict[str, Any] = Field(
        default="{}", description="a JSON object, or a string holding one"
    )


class ToolCallIn(_Request):
    id: str | None = None
    type: Literal["function"] = "function"
    function: FunctionCall


class _Message(_Request):
    name: str | None = None


class SystemMessage(_Message):
    role: Literal["system", "developer"]
    content: Content


class UserMessage(_Message):
    role: Literal["user"]
    content: UserContent = Field(description="text, or text and image parts (vision models only)")


class AssistantMessageIn(_Message):
    role: Literal["assistant"]
    content: Content | None = None
    tool_calls: list[ToolCallIn] | None = None
    reasoning_content: str | None = None
    reasoning: str | None = None


class ToolMessage(_Message):
    role: Literal["tool"]
    content: Content = Field(default="", description="the tool's result (none: empty)")
    tool_call_id: str | None = None


ChatMessage = Annotated[SystemMessage | UserMessage | AssistantMessageIn | ToolMessage, Field(discriminator="role")]


class FunctionDef(_Request):
    name: str = Field(min_length=1, max_length=128)
    description: str | None = None
    parameters: dict[str, Any] = Field(
        default_factory=lambda: {"type": "object", "properties": {}},
        description="a JSON Schema; a `type` must be one of JSON Schema's types, unknown keywords are ignored",
    )
    strict: bool | None = None


class ToolDef(_Request):
    type: Literal["function"] = "function"
    function: FunctionDef


class NamedToolChoice(_Request):
    class _Name(_Request):
        name: str = Field(min_length=1, max_length=128, description="one of the request's tools")

    type: Literal["function"] = "function"
    function: _Name


class JsonSchemaFormat(_Request):
    name: str = "response"
    schema_: dict[str, Any] = Field(
        default_factory=dict,
        alias="schema",
        description="a JSON Schema; a `type` must be one of JSON Schema's types, unknown keywords are ignored",
    )
    strict: bool | None = None


class TextFormat(_Request):
    type: Literal["text"]


class JsonObjectFormat(_Request):
    type: Literal["json_object"]


class JsonSchemaResponseFormat(_Request):
    type: Literal["json_schema"]
    json_schema: JsonSchemaFormat


ResponseFormat = Annotated[TextFormat | JsonObjectFormat | JsonSchemaResponseFormat, Field(discriminator="type")]


class StreamOptions(_Request):
    include_usage: bool = False


Stop = Annotated[str, Field(min_length=1)]
TokenKey = Annotated[str, Field(pattern=r"^(0|[1-9][0-9]{0,8})$")]  # the vocabulary bound is in the OpenAPI schema


class LoraScale(_Request):
    """llama-server's per-request adapter choice: an adapter by position (`--lora` order), and its scale."""

    id: int
    scale: float = Field(default=1.0, allow_inf_nan=False)


class SamplingFields(_Request):
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
        }


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


class TokenizeRequest(_Request):
    """llama-server's (`content`, `with_pieces`) and vLLM's (`prompt` or `messages`) shapes."""

    model: str | None = None
    content: str | None = Field(default=None, description="text to tokenize (llama-server)")
    prompt: str | None = Field(default=None, description="text to tokenize (vLLM); wins over `content`")
    messages: list[ChatMessage] | None = Field(
        default=None, min_length=1, description="a conversation, rendered with the chat template; wins over text"
    )
    tools: list[ToolDef] | None = None
    add_generation_prompt: bool = True
    add_special: bool = Field(default=False, description="accepted; Qwen adds no special tokens of its own")
    add_special_tokens: bool = Field(default=False, description="as `add_special`")
    with_pieces: bool = Field(default=False, description="each token as {id, piece} (llama-server)")


class DetokenizeRequest(_Request):
    model: str | None = None
    tokens: list[TokenId]


# ----- responses ---------------------------------------------------------------------------


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


class CompletionTokensDetails(BaseModel):
    reasoning_tokens: int = 0


class PromptTokensDetails(BaseModel):
    cached_tokens: int = 0


class UsageInfo(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    completion_tokens_details: CompletionTokensDetails = Field(default_factory=CompletionTokensDetails)
    prompt_tokens_details: PromptTokensDetails = Field(default_factory=PromptTokensDetails)


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


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int = Field(default_factory=lambda: int(time.time()))
    owned_by: str = "qwenkit"
    parent: str | None = None  # for a LoRA adapter: the base model it applies to
    root: str | None = None  # the model this name serves (for a LoRA adapter: its file)


class LoadLoraAdapterRequest(_Request):
    """vLLM's runtime adapter load: requests then select it with `model` = `lora_name`."""

    lora_name: str = Field(min_length=1, description="the name requests give in `model`; not one already taken")
    lora_path: str = Field(
        min_length=1,
        description="on the server: a GGUF LoRA file (llama.cpp engine) or a peft adapter directory (transformers)",
    )


class UnloadLoraAdapterRequest(_Request):
    lora_name: str = Field(min_length=1, description="an adapter's name (as `/v1/models` lists it with a `parent`)")


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class TokenPiece(BaseModel):
    id: int
    piece: str


class TokenizeResponse(BaseModel):
    tokens: list[int] | list[TokenPiece]
    count: int
    max_model_len: int


class DetokenizeResponse(BaseModel):
    content: str  # llama-server's name
    prompt: str  # vLLM's name


class Health(BaseModel):
    status: Literal["ok", "loading", "error"]


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorDetail
