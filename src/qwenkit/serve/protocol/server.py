"""The server's other endpoints: tokenize/detokenize, models and LoRA adapters, health, and the
error body every endpoint answers with.
"""

from __future__ import annotations

import time
from typing import Literal

from pydantic import BaseModel, Field

from qwenkit.serve.protocol.common import RequestModel, TokenId
from qwenkit.serve.protocol.messages import ChatMessage, ToolDef


class TokenizeRequest(RequestModel):
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


class DetokenizeRequest(RequestModel):
    model: str | None = None
    tokens: list[TokenId]


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int = Field(default_factory=lambda: int(time.time()))
    owned_by: str = "qwenkit"
    parent: str | None = None  # for a LoRA adapter: the base model it applies to
    root: str | None = None  # the model this name serves (for a LoRA adapter: its file)


class LoadLoraAdapterRequest(RequestModel):
    """vLLM's runtime adapter load: requests then select it with `model` = `lora_name`."""

    lora_name: str = Field(min_length=1, description="the name requests give in `model`; not one already taken")
    lora_path: str = Field(
        min_length=1,
        description="on the server: a GGUF LoRA file (llama.cpp engine) or a peft adapter directory (transformers)",
    )


class UnloadLoraAdapterRequest(RequestModel):
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
