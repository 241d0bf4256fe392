"""`/v1/chat/completions` and `/v1/completions`: requests to prepared turns, deltas to responses."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse

from qwenkit.model import Model, PreparedTurn
from qwenkit.results import ChatResult
from qwenkit.serve import adapters, structured
from qwenkit.serve.http_errors import ApiError, error_body
from qwenkit.serve.protocol import (
    AssistantMessage,
    ChatChoice,
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChunkChoice,
    Completion,
    CompletionRequest,
    CompletionTokensDetails,
    DeltaMessage,
    FunctionCallOut,
    NamedToolChoice,
    PromptTokensDetails,
    TextChoice,
    ToolCallOut,
    UsageInfo,
    new_id,
)
from qwenkit.serve.runner import EngineFailure, TurnStream, run_turn

router = APIRouter()
log = logging.getLogger("qwenkit.prompts")


def _usage(result: ChatResult) -> UsageInfo:
    u = result.usage
    return UsageInfo(
        prompt_tokens=u.prompt_tokens,
        completion_tokens=u.completion_tokens,
        total_tokens=u.total_tokens,
        completion_tokens_details=CompletionTokensDetails(reasoning_tokens=u.reasoning_tokens),
        prompt_tokens_details=PromptTokensDetails(cached_tokens=u.cached_prompt_tokens),
    )


def _tool_out(call: Any, index: int) -> ToolCallOut:
    return ToolCallOut(
        index=index, id=call.id, type="function", function=FunctionCallOut(name=call.name, arguments=call.arguments)
    )


def _target(model: Model, body: ChatCompletionRequest | CompletionRequest, request: Request) -> adapters.Target:
    settings = request.app.state.settings
    return adapters.select(settings.served_name or model.name, settings.lora, body.model, body.lora)


def _prepare_chat(model: Model, body: ChatCompletionRequest, request: Request, target: adapters.Target) -> PreparedTurn:
    settings = request.app.state.settings
    if len(body.messages) > settings.max_messages:
        raise ApiError(
            400, f"too many messages: {len(body.messages)} (at most {settings.max_messages})", param="messages"
        )
    limit = _max_tokens(body.limit(), settings)
    tools = [t.model_dump(exclude_none=True) for t in body.tools] if body.tools else None
    choice = body.tool_choice
    if choice == "none":
        tools = None
    grammar = None
    think = body.thinking()
    fmt = body.response_format
    if fmt is not None and fmt.type != "text":
        grammar = structured.json_grammar(fmt.json_schema.schema_ if fmt.type == "json_schema" else None)
    elif tools and (choice == "required" or isinstance(choice, NamedToolChoice)):
        wanted = [t["function"] for t in tools]
        if isinstance(choice, NamedToolChoice):
            wanted = [f for f in wanted if f["name"] == choice.function.name]
        if "<function=" not in model.template.source:  # Hermes JSON calls can be enforced
            grammar = structured.hermes_call_grammar(wanted, several=body.parallel_tool_calls and len(wanted) > 1)
    if grammar is not None:
        think = False  # constrained output is the answer itself: no free-form thinking first
    messages = [m.model_dump(exclude_none=True) for m in body.messages]
    _log_prompt(request, messages)
    effort = "low" if body.reasoning_effort == "minimal" else body.reasoning_effort
    turn = model.prepare(
        messages,
        tools=tools,
        think=think,
        max_tokens=limit,
        grammar=grammar,
        thinking_budget=body.thinking_budget,
        reasoning_effort=effort,
        adapters=target.adapters,
        **body.sampling(),
    )
    _check_prompt(turn, settings, model)
    return turn


def _log_prompt(request: Request, prompt: object) -> None:
    """Prompt text goes to the log only with --log-prompts (the access log never has it)."""
    if request.app.state.settings.log_prompts:
        log.info(
            "request %s prompt: %s", getattr(request.state, "request_id", "-"), json.dumps(prompt, ensure_ascii=False)
        )


def _max_tokens(asked: int | None, settings) -> int:
    if asked is not None and asked > settings.max_tokens_cap:
        raise ApiError(
            400, f"max_tokens is {asked}; this server allows at most {settings.max_tokens_cap}", param="max_tokens"
        )
    return asked or settings.default_max_tokens


def _check_prompt(turn: PreparedTurn, settings, model: Model, param: str = "messages") -> None:
    cap = min(settings.max_prompt_tokens or model.engine.n_ctx - 1, model.engine.n_ctx - 1)
    if len(turn.prompt) > cap:
        raise ApiError(
            400,
            f"the prompt has {len(turn.prompt)} tokens; this server allows at most {cap}",
            code="context_length_exceeded",
            param=param,
        )


def _finish(result: ChatResult, parallel: bool) -> tuple[str, list]:
    calls = result.tool_calls if parallel else result.tool_calls[:1]
    return result.finish_reason, calls


async def _collect(model: Model, turn: PreparedTurn, request: Request) -> ChatResult:
    """Run a turn to the end, cancelling it if the client goes away meanwhile."""

    async def consume() -> ChatResult:
        async for delta in run_turn(model, turn, request.app.state.metrics, live=False):
            if delta.result is not None:
                return delta.result
        raise EngineFailure("the engine ended without a result")

    async def client_gone() -> None:  # the body is read: the next message is the disconnect
        while (await request.receive())["type"] != "http.disconnect":
            pass

    work = asyncio.ensure_future(consume())
    watch = asyncio.ensure_future(client_gone())
    try:
        done, _ = await asyncio.wait({work, watch}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watch.cancel()
    if work not in done:
        work.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await work
        raise ApiError(499, "client closed the request")
    try:
        return work.result()
    except EngineFailure as exc:
        raise ApiError(503, f"generation failed: {exc}") from None


def _spend(request: Request, result: ChatResult) -> None:
    request.app.state.limiter.spend(request.state.bucket, result.usage.total_tokens)


@router.post("/v1/chat/completions", response_model=None)
async def chat_completions(body: ChatCompletionRequest, request: Request):
    model: Model = request.app.state.ready_model()
    target = _target(model, body, request)
    turn = _prepare_chat(model, body, request, target)
    rid = new_id("chatcmpl")
    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        deltas = run_turn(model, turn, request.app.state.metrics)  # submit now: a full queue is a 429, not a broken 200
        return _sse(_chat_events(target.name, deltas, request, rid, include_usage, body.parallel_tool_calls))
    result = await _collect(model, turn, request)
    _spend(request, result)
    finish, calls = _finish(result, body.parallel_tool_calls)
    message = AssistantMessage(
        content=result.content if (result.content or not calls) else None,
        reasoning_content=result.reasoning,
        reasoning=result.reasoning,
        tool_calls=[_tool_out(c, i) for i, c in enumerate(calls)] or None,
    )
    return ChatCompletion(
        id=rid, model=target.name, choices=[ChatChoice(message=message, finish_reason=finish)], usage=_usage(result)
    )


async def _chat_events(
    name: str, deltas: TurnStream, request: Request, rid: str, include_usage: bool, parallel: bool
) -> AsyncIterator[str]:
    def event(delta: DeltaMessage, finish: str | None = None) -> str:
        chunk = ChatCompletionChunk(id=rid, model=name, choices=[ChunkChoice(delta=delta, finish_reason=finish)])
        return chunk.model_dump_json(exclude_none=True)

    yield event(DeltaMessage(role="assistant", content=""))
    n_calls = 0
    async for delta in deltas:
        if delta.reasoning:
            yield event(DeltaMessage(reasoning_content=delta.reasoning, reasoning=delta.reasoning))
        if delta.content:
            yield event(DeltaMessage(content=delta.content))
        calls = delta.tool_calls if parallel else delta.tool_calls[: max(0, 1 - n_calls)]
        if calls:
            yield event(DeltaMessage(tool_calls=[_tool_out(c, n_calls + i) for i, c in enumerate(calls)]))
            n_calls += len(calls)
        if delta.result is not None:
            _spend(request, delta.result)
            yield event(DeltaMessage(), delta.finish_reason)
            if include_usage:
                usage = ChatCompletionChunk(id=rid, model=name, choices=[], usage=_usage(delta.result))
                yield usage.model_dump_json(exclude_none=True)


@router.post("/v1/completions", response_model=None)
async def completions(body: CompletionRequest, request: Request):
    model: Model = request.app.state.ready_model()
    settings = request.app.state.settings
    _log_prompt(request, body.prompt)
    target = _target(model, body, request)
    turn = model.prepare_completion(
        body.prompt, max_tokens=_max_tokens(body.max_tokens, settings), adapters=target.adapters, **body.sampling()
    )
    _check_prompt(turn, settings, model, param="prompt")
    rid = new_id("cmpl")
    prefix = body.prompt if body.echo else ""
    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        deltas = run_turn(model, turn, request.app.state.metrics)  # submit now (see chat_completions)
        return _sse(_completion_events(target.name, deltas, request, rid, prefix, include_usage))
    result = await _collect(model, turn, request)
    _spend(request, result)
    return Completion(
        id=rid,
        model=target.name,
        usage=_usage(result),
        choices=[TextChoice(text=prefix + result.content, finish_reason=result.finish_reason)],
    )


async def _completion_events(
    name: str, deltas: TurnStream, request: Request, rid: str, prefix: str, include_usage: bool
) -> AsyncIterator[str]:
    def event(text: str, finish: str | None = None) -> str:
        return Completion(id=rid, model=name, choices=[TextChoice(text=text, finish_reason=finish)]).model_dump_json(
            exclude_none=True
        )

    if prefix:
        yield event(prefix)
    async for delta in deltas:
        if delta.content:
            yield event(delta.content)
        if delta.result is not None:
            _spend(request, delta.result)
            yield event("", delta.finish_reason)
            if include_usage:
                yield Completion(id=rid, model=name, choices=[], usage=_usage(delta.result)).model_dump_json(
                    exclude_none=True
                )


def _sse(events: AsyncIterator[str]) -> StreamingResponse:
    async def body() -> AsyncIterator[str]:
        try:
            async for data in events:
                yield f"data: {data}\n\n"
        except EngineFailure as exc:
            yield f"data: {json.dumps(error_body(503, f'generation failed: {exc}'))}\n\n"
        except ApiError as exc:
            yield f"data: {json.dumps(error_body(exc.status, exc.message))}\n\n"
        yield "data: [DONE]\n\n"

    return StreamingResponse(body(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
