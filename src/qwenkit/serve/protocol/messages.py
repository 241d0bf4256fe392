"""The conversation a chat request carries: messages and their content parts (text, images), tools,
response formats.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field

from qwenkit.serve.protocol.common import RequestModel


class ContentPart(RequestModel):
    type: Literal["text"] = Field(description="a text part (images go in user messages)")
    text: str


Content = str | list[ContentPart]


class ImageUrl(RequestModel):
    url: str = Field(
        min_length=1,
        description="a data: URI (base64 PNG, JPEG, WebP, GIF...); an http(s) URL when the server runs with "
        "--allow-remote-media; a path or file:// URL under the server's --media-dir",
    )
    detail: Literal["auto", "low", "high"] | None = Field(
        default=None, description="accepted; the size bound is the server's --image-max-tokens"
    )


class ImagePart(RequestModel):
    type: Literal["image_url"]
    image_url: ImageUrl


UserContent = str | list[Annotated[ContentPart | ImagePart, Field(discriminator="type")]]


JsonObjectText = Annotated[
    str, Field(json_schema_extra={"contentMediaType": "application/json", "contentSchema": {"type": "object"}})
]


class FunctionCall(RequestModel):
    name: str = Field(min_length=1)
    arguments: JsonObjectText | dict[str, Any] = Field(
        default="{}", description="a JSON object, or a string holding one"
    )


class ToolCallIn(RequestModel):
    id: str | None = None
    type: Literal["function"] = "function"
    function: FunctionCall


class _Message(RequestModel):
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


class FunctionDef(RequestModel):
    name: str = Field(min_length=1, max_length=128)
    description: str | None = None
    parameters: dict[str, Any] = Field(
        default_factory=lambda: {"type": "object", "properties": {}},
        description="a JSON Schema; a `type` must be one of JSON Schema's types, unknown keywords are ignored",
    )
    strict: bool | None = None


class ToolDef(RequestModel):
    type: Literal["function"] = "function"
    function: FunctionDef


class NamedToolChoice(RequestModel):
    class _Name(RequestModel):
        name: str = Field(min_length=1, max_length=128, description="one of the request's tools")

    type: Literal["function"] = "function"
    function: _Name


class JsonSchemaFormat(RequestModel):
    name: str = "response"
    schema_: dict[str, Any] = Field(
        default_factory=dict,
        alias="schema",
        description="a JSON Schema; a `type` must be one of JSON Schema's types, unknown keywords are ignored",
    )
    strict: bool | None = None


class TextFormat(RequestModel):
    type: Literal["text"]


class JsonObjectFormat(RequestModel):
    type: Literal["json_object"]


class JsonSchemaResponseFormat(RequestModel):
    type: Literal["json_schema"]
    json_schema: JsonSchemaFormat


ResponseFormat = Annotated[TextFormat | JsonObjectFormat | JsonSchemaResponseFormat, Field(discriminator="type")]
