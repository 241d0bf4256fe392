"""`/tokenize` and `/detokenize`, in llama-server's and vLLM's shapes, for clients that count tokens."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Request

from qwenkit.serve.http_errors import ApiError
from qwenkit.serve.openapi import route_errors
from qwenkit.serve.protocol.server import (
    DetokenizeRequest,
    DetokenizeResponse,
    TokenizeRequest,
    TokenizeResponse,
    TokenPiece,
)

router = APIRouter()
_ERRORS = route_errors(400, 401, 404, 413, 429, 500, 503)


@router.post("/tokenize", responses=_ERRORS)
async def tokenize(body: TokenizeRequest, request: Request) -> TokenizeResponse:
    """Token ids of text, or of a conversation rendered as a chat turn would be."""
    route = request.app.state.routes().resolve(body.model)
    model = route.model
    if body.messages is not None:
        messages = [m.model_dump(exclude_none=True) for m in body.messages]
        tools = [t.model_dump(exclude_none=True) for t in body.tools] if body.tools else None
        if body.add_generation_prompt:  # exactly the prompt a chat turn would send
            # on a worker thread: images in the messages are fetched and decoded
            ids = (await asyncio.to_thread(model.prepare, messages, tools=tools, **route.options)).prompt
        else:
            ids = model.engine.tokenize(model.template.render(messages, tools=tools, add_generation_prompt=False))
    else:
        text = body.prompt if body.prompt is not None else body.content or ""
        ids = model.engine.tokenize(text, special=True) if text else []
    tokens: list[int] | list[TokenPiece] = ids
    if body.with_pieces:
        tokens = [TokenPiece(id=t, piece=model.engine.token_bytes(t).decode("utf-8", errors="replace")) for t in ids]
    return TokenizeResponse(tokens=tokens, count=len(ids), max_model_len=model.engine.n_ctx)


@router.post("/detokenize", responses=_ERRORS)
async def detokenize(body: DetokenizeRequest, request: Request) -> DetokenizeResponse:
    model = request.app.state.routes().resolve(body.model).model
    n_vocab = model.engine.n_vocab
    bad = [t for t in body.tokens if t >= n_vocab]
    if bad:
        raise ApiError(400, f"token {bad[0]} is outside the vocabulary (0..{n_vocab - 1})", param="tokens")
    text = model.engine.detokenize(body.tokens)
    return DetokenizeResponse(content=text, prompt=text)
