"""OpenAI Responses API shapes (`POST /v1/responses`): requests, output items, streamed events.

Typed and validated, no serving logic (that is `responses_routes.py`). Text and function tools
only: the built-in tools (web search, files, computer use) and images are not offered.
"""

from __future__ import annotations

import time
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.json_schema import JsonDict

from qwenkit.serve.protocol.common import TokenCount, TopLogprobs, UsageInfo
from qwenkit.serve.protocol.messages import JsonObjectText, JsonSchemaFormat


class _Request(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)


class InputText(_Request):
    type: Literal["input_text", "output_text"]
    text: str


class InputImage(_Request):
    type: Literal["input_image"]
    image_url: str = Field(
        min_length=1,
        description="a data: URI; an http(s) URL with --allow-remote-media; a path under --media-dir",
    )
    detail: Literal["auto", "low", "high"] | None = None


class MessageItem(_Request):
    type: Literal["message"] = "message"
    role: Literal["user", "system", "developer", "assistant"]
    content: str | list[Annotated[InputText | InputImage, Field(discriminator="type")]] = Field(
        description="text, or input_text and input_image parts (images in user messages, vision models only)"
    )


class FunctionCallItem(_Request):
    type: Literal["function_call"]
    call_id: str = Field(min_length=1)
    name: str = Field(min_length=1, max_length=128)
    arguments: JsonObjectText = "{}"
    id: str | None = None


class FunctionCallOutputItem(_Request):
    type: Literal["function_call_output"]
    call_id: str = Field(min_length=1)
    output: str


class ReasoningText(_Request):
    type: Literal["reasoning_text", "summary_text"]
    text: str


class ReasoningItemIn(_Request):
    type: Literal["reasoning"]
    id: str | None = None
    summary: list[ReasoningText] = Field(default_factory=list)
    content: list[ReasoningText] | None = None


InputItem = MessageItem | FunctionCallItem | FunctionCallOutputItem | ReasoningItemIn


class FunctionTool(_Request):
    type: Literal["function"]
    name: str = Field(min_length=1, max_length=128)
    description: str | None = None
    parameters: dict[str, Any] | None = Field(
        default=None, description="a JSON Schema; a `type` must be one of JSON Schema's types"
    )
    strict: bool | None = None


class NamedFunction(_Request):
    type: Literal["function"]
    name: str = Field(min_length=1, max_length=128, description="one of the request's tools")


class TextFormatText(_Request):
    type: Literal["text"]


class TextFormatJsonObject(_Request):
    type: Literal["json_object"]


class TextFormatJsonSchema(_Request):
    type: Literal["json_schema"]
    name: str = "response"
    schema_: dict[str, Any] = Field(default_factory=dict, alias="schema")
    strict: bool | None = None

    def as_chat(self) -> JsonSchemaFormat:
        return JsonSchemaFormat(name=self.name, schema=self.schema_, strict=self.strict)


class TextOptions(_Request):
    format: Annotated[TextFormatText | TextFormatJsonObject | TextFormatJsonSchema, Field(discriminator="type")] = (
        Field(default_factory=lambda: TextFormatText(type="text"))
    )


class ReasoningOptions(_Request):
    effort: Literal["none", "minimal", "low", "medium", "high"] | None = None
    summary: str | None = Field(default=None, description="accepted; reasoning comes back whole, not summarised")


# "required" or a named tool choice needs tools (the name being one of them JSON Schema cannot state)
_TOOL_CHOICE_NEEDS_TOOLS: JsonDict = {
    "if": {
        "required": ["tool_choice"],
        "properties": {"tool_choice": {"not": {"anyOf": [{"enum": ["auto", "none"]}, {"type": "null"}]}}},
    },
    "then": {"required": ["tools"], "properties": {"tools": {"type": "array", "minItems": 1}}},
}


class ResponsesRequest(_Request):
    model_config = ConfigDict(extra="ignore", strict=True, json_schema_extra=_TOOL_CHOICE_NEEDS_TOOLS)

    model: str | None = None
    input: str | Annotated[list[InputItem], Field(min_length=1)] = Field(
        description="text (a user message), or a list of items"
    )
    instructions: str | None = Field(default=None, description="a system message for this response only")
    previous_response_id: str | None = Field(default=None, description="continue a stored response")
    tools: list[FunctionTool] | None = None
    tool_choice: Literal["auto", "none", "required"] | NamedFunction | None = None
    parallel_tool_calls: bool = True
    max_output_tokens: TokenCount | None = None
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    top_logprobs: TopLogprobs | None = None
    seed: Annotated[int, Field()] | None = None
    reasoning: ReasoningOptions | None = None
    text: TextOptions | None = None
    store: bool = Field(default=True, description="keep the response for `previous_response_id` (bounded, in memory)")
    stream: bool = False
    metadata: dict[str, str] | None = None
    user: str | None = Field(default=None, max_length=256)


# ----- output -----------------------------------------------------------------------------


class OutputText(BaseModel):
    type: Literal["output_text"] = "output_text"
    text: str
    annotations: list[Any] = Field(default_factory=list)


class ReasoningContent(BaseModel):
    type: Literal["reasoning_text"] = "reasoning_text"
    text: str


class OutputMessage(BaseModel):
    type: Literal["message"] = "message"
    id: str
    role: Literal["assistant"] = "assistant"
    status: Literal["in_progress", "completed", "incomplete"] = "completed"
    content: list[OutputText] = Field(default_factory=list)


class ReasoningItem(BaseModel):
    type: Literal["reasoning"] = "reasoning"
    id: str
    summary: list[Any] = Field(default_factory=list)
    content: list[ReasoningContent] = Field(default_factory=list)
    status: Literal["in_progress", "completed", "incomplete"] = "completed"


class FunctionCallOut(BaseModel):
    type: Literal["function_call"] = "function_call"
    id: str
    call_id: str
    name: str
    arguments: str
    status: Literal["in_progress", "completed", "incomplete"] = "completed"


OutputItem = OutputMessage | ReasoningItem | FunctionCallOut


class InputTokensDetails(BaseModel):
    cached_tokens: int = 0


class OutputTokensDetails(BaseModel):
    reasoning_tokens: int = 0


class ResponseUsage(BaseModel):
    input_tokens: int
    input_tokens_details: InputTokensDetails
    output_tokens: int
    output_tokens_details: OutputTokensDetails
    total_tokens: int

    @classmethod
    def of(cls, usage: UsageInfo) -> ResponseUsage:
        return cls(
            input_tokens=usage.prompt_tokens,
            input_tokens_details=InputTokensDetails(cached_tokens=usage.prompt_tokens_details.cached_tokens),
            output_tokens=usage.completion_tokens,
            output_tokens_details=OutputTokensDetails(
                reasoning_tokens=usage.completion_tokens_details.reasoning_tokens
            ),
            total_tokens=usage.total_tokens,
        )


class IncompleteDetails(BaseModel):
    reason: Literal["max_output_tokens", "content_filter"]


class ResponseError(BaseModel):
    code: str
    message: str


ResponseStatus = Literal["completed", "incomplete", "in_progress", "failed"]


class Response(BaseModel):
    id: str
    object: Literal["response"] = "response"
    created_at: int = Field(default_factory=lambda: int(time.time()))
    status: ResponseStatus
    model: str
    output: list[OutputItem] = Field(default_factory=list)
    usage: ResponseUsage | None = None
    incomplete_details: IncompleteDetails | None = None
    error: ResponseError | None = None
    instructions: str | None = None
    previous_response_id: str | None = None
    max_output_tokens: int | None = None
    parallel_tool_calls: bool = True
    temperature: float | None = None
    top_p: float | None = None
    tool_choice: Any = "auto"
    tools: list[dict[str, Any]] = Field(default_factory=list)
    text: dict[str, Any] = Field(default_factory=lambda: {"format": {"type": "text"}})
    metadata: dict[str, str] = Field(default_factory=dict)
    store: bool = True
