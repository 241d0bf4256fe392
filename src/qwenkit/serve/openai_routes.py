"""`/v1/chat/completions` and `/v1/completions`: requests to prepared turns, deltas to responses."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
from collections.abc import AsyncIterator, Mapping
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse

from qwenkit.chat import ToolCallPart
from qwenkit.chat.grammar import json_grammar
from qwenkit.chat.tools import forced_call_grammar
from qwenkit.engines.base import TokenLogprob
from qwenkit.model import Model
from qwenkit.results import ChatResult
from qwenkit.serve.http_errors import ApiError, error_body
from qwenkit.serve.logprobs import chat_logprobs, completion_logprobs
from qwenkit.serve.openapi import route_errors, streamed
from qwenkit.serve.protocol.chat import (
    AssistantMessage,
    ChatChoice,
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChunkChoice,
    DeltaMessage,
    FunctionCallOut,
    ToolCallOut,
)
from qwenkit.serve.protocol.common import (
    CompletionLogprobs,
    CompletionTokensDetails,
    LoraScale,
    PromptTokensDetails,
    UsageInfo,
    new_id,
)
from qwenkit.serve.protocol.completions import Completion, CompletionRequest, TextChoice
from qwenkit.serve.protocol.messages import NamedToolChoice, UserMessage
from qwenkit.serve.routing import Route
from qwenkit.serve.runner import EngineFailure, TurnStream, run_turn
from qwenkit.turn import PreparedTurn

router = APIRouter()
log = logging.getLogger("qwenkit.prompts")


def usage_of(results: list[ChatResult]) -> UsageInfo:
    """One request's usage: the prompt once (its choices share it), every choice's completion."""
    first = results[0].usage
    completion = sum(r.usage.completion_tokens for r in results)
    return UsageInfo(
        prompt_tokens=first.prompt_tokens,
        completion_tokens=completion,
        total_tokens=first.prompt_tokens + completion,
        completion_tokens_details=CompletionTokensDetails(
            reasoning_tokens=sum(r.usage.reasoning_tokens for r in results),
            accepted_prediction_tokens=sum(r.usage.accepted_prediction_tokens for r in results),
            rejected_prediction_tokens=sum(r.usage.rejected_prediction_tokens for r in results),
        ),
        prompt_tokens_details=PromptTokensDetails(cached_tokens=first.cached_prompt_tokens),
    )


def resolve_route(request: Request, name: str | None, lora: list[LoraScale] | None = None) -> Route:
    """The target a request's `model` names (404 `model_not_found` for an unknown one); with
    llama-server's `lora` list, its adapters replace the route's."""
    routes = request.app.state.routes()
    route = routes.resolve(name)
    return route if lora is None else routes.with_lora(route, [(e.id, e.scale) for e in lora])


def _choices(n: int, settings) -> int:
    if n > settings.max_n:
        raise ApiError(400, f"n is {n}; this server allows at most {settings.max_n} (--max-n)", param="n")
    return n


def _part_out(part: ToolCallPart) -> ToolCallOut:
    return ToolCallOut(
        index=part.index,
        id=part.id,
        type="function" if part.id else None,
        function=FunctionCallOut(name=part.name, arguments=part.arguments),
    )


def _tool_out(call: Any, index: int) -> ToolCallOut:
    return ToolCallOut(
        index=index, id=call.id, type="function", function=FunctionCallOut(name=call.name, arguments=call.arguments)
    )


async def prepare_chat(
    model: Model, body: ChatCompletionRequest, request: Request, options: Mapping[str, Any]
) -> PreparedTurn:
    """A chat request checked against the server's limits and rendered to a turn (`options`: the
    route's extras for `Model.prepare`). The Responses API runs through here too. A request with
    images is prepared on a worker thread: fetching and decoding them must not stall the event loop."""
    settings = request.app.state.settings
    if len(body.messages) > settings.max_messages:
        raise ApiError(
            400, f"too many messages: {len(body.messages)} (at most {settings.max_messages})", param="messages"
        )
    if body.max_tokens is not None:  # the field that loses to max_completion_tokens is still checked
        _max_tokens(body.max_tokens, settings)
    limit = _max_tokens(body.limit(), settings)
    tools = [t.model_dump(exclude_none=True) for t in body.tools] if body.tools else None
    choice = body.tool_choice
    if choice == "none":
        tools = None
    grammar = None
    think = body.thinking()
    fmt = body.response_format
    if fmt is not None and fmt.type != "text":
        schema = fmt.json_schema.schema_ if fmt.type == "json_schema" and fmt.json_schema is not None else None
        grammar = json_grammar(schema)
    elif tools and (choice == "required" or isinstance(choice, NamedToolChoice)):
        wanted = [t["function"] for t in tools]
        if isinstance(choice, NamedToolChoice):
            wanted = [f for f in wanted if f["name"] == choice.function.name]
        several = body.parallel_tool_calls and len(wanted) > 1
        grammar = forced_call_grammar(model.template, wanted, several=several)
    if grammar is not None:
        think = False  # constrained output is the answer itself: no free-form thinking first
    messages = [m.model_dump(exclude_none=True) for m in body.messages]
    _log_prompt(request, messages)
    effort = "low" if body.reasoning_effort == "minimal" else body.reasoning_effort
    has_images = any(isinstance(m, UserMessage) and not isinstance(m.content, str) for m in body.messages)
    prepare = functools.partial(
        model.prepare,
        messages,
        media=settings.media(),
        tools=tools,
        think=think,
        max_tokens=limit,
        grammar=grammar,
        thinking_budget=body.thinking_budget,
        reasoning_effort=effort,
        logprobs=body.logprob_count(),
        **options,
        **body.sampling(),
    )
    turn = await asyncio.to_thread(prepare) if has_images else prepare()
    _check_prompt(turn, settings, model)
    return turn


def _log_prompt(request: Request, prompt: object) -> None:
    """Prompt text goes to the log only with --log-prompts (the access log never has it)."""
    if request.app.state.settings.log_prompts:
        log.info(
            "request %s prompt: %s", getattr(request.state, "request_id", "-"), json.dumps(prompt, ensure_ascii=False)
        )


def _max_tokens(asked: int | None, settings, default: int | None = None) -> int:
    if asked is not None and asked > settings.max_tokens_cap:
        raise ApiError(
            400, f"max_tokens is {asked}; this server allows at most {settings.max_tokens_cap}", param="max_tokens"
        )
    return asked or min(default or settings.default_max_tokens, settings.max_tokens_cap)


def _check_prompt(turn: PreparedTurn, settings, model: Model, param: str = "messages") -> None:
    cap = min(settings.max_prompt_tokens or model.engine.n_ctx - 1, model.engine.n_ctx - 1)
    if len(turn.prompt) > cap:
        raise ApiError(
            400,
            f"the prompt has {len(turn.prompt)} tokens; this server allows at most {cap}",
            code="context_length_exceeded",
            param=param,
        )


def finish_of(result: ChatResult, parallel: bool) -> tuple[str, list]:
    calls = result.tool_calls if parallel else result.tool_calls[:1]
    return result.finish_reason, calls


async def collect(model: Model, turn: PreparedTurn, request: Request, n: int = 1) -> list[ChatResult]:
    """Run a turn's `n` choices to the end (results by index), cancelling them if the client
    goes away meanwhile."""

    async def consume() -> list[ChatResult]:
        results: dict[int, ChatResult] = {}
        async for delta in await run_turn(model, turn, request.app.state.metrics, live=False, n=n):
            if delta.result is not None:
                results[delta.index] = delta.result
        if len(results) < n:
            raise EngineFailure("the engine ended without a result")
        return [results[i] for i in range(n)]

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


def spend(request: Request, results: list[ChatResult]) -> None:
    request.app.state.limiter.spend(request.state.bucket, usage_of(results).total_tokens)


_ERRORS = route_errors(400, 401, 404, 413, 429, 500, 503)


@router.post(
    "/v1/chat/completions",
    response_model=None,
    responses={**streamed(ChatCompletion, "The completion, or with `stream` its chunks"), **_ERRORS},
)
async def chat_completions(body: ChatCompletionRequest, request: Request):
    route = resolve_route(request, body.model, body.lora)
    model = route.model
    n = _choices(body.n, request.app.state.settings)
    turn = await prepare_chat(model, body, request, route.options)
    rid = new_id("chatcmpl")
    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        # submit now: a full queue is a 429, not a broken 200
        deltas = await run_turn(model, turn, request.app.state.metrics, n=n)
        return sse(_chat_events(route, deltas, request, rid, include_usage, body.parallel_tool_calls, n))
    results = await collect(model, turn, request, n)
    spend(request, results)
    choices = []
    for i, result in enumerate(results):
        finish, calls = finish_of(result, body.parallel_tool_calls)
        message = AssistantMessage(
            content=result.content if (result.content or not calls) else None,
            reasoning_content=result.reasoning,
            reasoning=result.reasoning,
            tool_calls=[_tool_out(c, j) for j, c in enumerate(calls)] or None,
        )
        logprobs = None if result.logprobs is None else chat_logprobs(model.engine.token_bytes, result.logprobs)
        choices.append(ChatChoice(index=i, message=message, finish_reason=finish, logprobs=logprobs))
    return ChatCompletion(id=rid, model=route.name, choices=choices, usage=usage_of(results))


async def _chat_events(
    route: Route, deltas: TurnStream, request: Request, rid: str, include_usage: bool, parallel: bool, n: int
) -> AsyncIterator[str]:
    token_bytes = route.model.engine.token_bytes
    pending: list[list[TokenLogprob]] = [[] for _ in range(n)]  # logprobs not yet sent, by choice

    def event(index: int, delta: DeltaMessage, finish: str | None = None) -> str:
        logprobs = chat_logprobs(token_bytes, pending[index]) if pending[index] else None
        pending[index] = []
        choice = ChunkChoice(index=index, delta=delta, finish_reason=finish, logprobs=logprobs)
        return ChatCompletionChunk(id=rid, model=route.name, choices=[choice]).model_dump_json(exclude_none=True)

    for i in range(n):
        yield event(i, DeltaMessage(role="assistant", content=""))
    results: list[ChatResult] = []
    async for delta in deltas:
        i = delta.index
        pending[i] += delta.logprobs
        if delta.reasoning:
            yield event(i, DeltaMessage(reasoning_content=delta.reasoning, reasoning=delta.reasoning))
        if delta.content:
            yield event(i, DeltaMessage(content=delta.content))
        # calls as they stream: id and name first, then pieces of the arguments (only the first
        # call without parallel_tool_calls)
        parts = [p for p in delta.tool_call_parts if parallel or p.index == 0]
        if parts:
            yield event(i, DeltaMessage(tool_calls=[_part_out(p) for p in parts]))
        if delta.result is not None:
            results.append(delta.result)
            yield event(i, DeltaMessage(), delta.finish_reason)
    if len(results) == n:
        spend(request, results)
        if include_usage:
            usage = ChatCompletionChunk(id=rid, model=route.name, choices=[], usage=usage_of(results))
            yield usage.model_dump_json(exclude_none=True)


@router.post(
    "/v1/completions",
    response_model=None,
    responses={**streamed(Completion, "The completion, or with `stream` its chunks"), **_ERRORS},
)
async def completions(body: CompletionRequest, request: Request):
    route = resolve_route(request, body.model, body.lora)
    model = route.model
    settings = request.app.state.settings
    n = _choices(body.n, settings)
    sampled = _choices(max(body.best_of or n, n), settings)
    _log_prompt(request, body.prompt)
    # best_of ranks choices by their likelihood: it needs each token's logprob
    logprobs = body.logprobs if body.logprobs is not None or sampled == n else 0
    turn = model.prepare_completion(
        body.prompt,
        max_tokens=_max_tokens(body.max_tokens, settings, default=16),
        logprobs=logprobs,
        prompt_logprobs=body.logprobs if body.echo else None,
        **route.options,
        **body.sampling(),
    )
    _check_prompt(turn, settings, model, param="prompt")
    rid = new_id("cmpl")
    echo = Echo(model, turn.prompt, body.prompt if isinstance(body.prompt, str) else None) if body.echo else None
    if body.stream and sampled == n:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        deltas = await run_turn(model, turn, request.app.state.metrics, n=n)  # submit now (see chat_completions)
        return sse(_completion_events(route, deltas, request, rid, echo, include_usage, body.logprobs, n))
    results = await collect(model, turn, request, sampled)
    spend(request, results)
    kept = sorted(results, key=_likelihood, reverse=True)[:n] if sampled > n else results
    scored = results[0].prompt_logprobs  # the first choice scores the prompt for all
    choices = [_text_choice(model, i, r, echo, body.logprobs, scored) for i, r in enumerate(kept)]
    whole = Completion(id=rid, model=route.name, usage=usage_of(results), choices=choices)
    if not body.stream:
        return whole
    # best_of with stream: the choices are known only at the end, sent then as one event each
    include_usage = bool(body.stream_options and body.stream_options.include_usage)
    return sse(_replay(whole, include_usage))


def _likelihood(result: ChatResult) -> float:
    return sum(lp.logprob for lp in result.logprobs or ())


class Echo:
    """The prompt that `echo` puts before a completion, as text and (for logprobs) token ids."""

    def __init__(self, model: Model, ids: list[int], text: str | None) -> None:
        self.ids = ids
        self.text = model.engine.detokenize(ids) if text is None else text


def _text_choice(
    model: Model,
    index: int,
    result: ChatResult,
    echo: Echo | None,
    top: int | None,
    scored: list[TokenLogprob | None] | None,
) -> TextChoice:
    prefix = echo.text if echo else ""
    logprobs = None
    if top is not None:
        token_bytes = model.engine.token_bytes
        lps = list(result.logprobs or [])
        if echo and scored is not None:
            logprobs = completion_logprobs(token_bytes, scored, echo.ids)
            tail = completion_logprobs(token_bytes, lps, [lp.token for lp in lps], len(prefix))
            for field in ("tokens", "token_logprobs", "top_logprobs", "text_offset"):
                getattr(logprobs, field).extend(getattr(tail, field))
        else:
            logprobs = completion_logprobs(token_bytes, lps, [lp.token for lp in lps], len(prefix))
    return TextChoice(index=index, text=prefix + result.content, finish_reason=result.finish_reason, logprobs=logprobs)


async def _replay(whole: Completion, include_usage: bool) -> AsyncIterator[str]:
    for choice in whole.choices:
        yield Completion(id=whole.id, model=whole.model, choices=[choice]).model_dump_json(exclude_none=True)
    if include_usage:
        yield Completion(id=whole.id, model=whole.model, choices=[], usage=whole.usage).model_dump_json(
            exclude_none=True
        )


async def _completion_events(
    route: Route,
    deltas: TurnStream,
    request: Request,
    rid: str,
    echo: Echo | None,
    include_usage: bool,
    top: int | None,
    n: int,
) -> AsyncIterator[str]:
    token_bytes = route.model.engine.token_bytes
    offsets = [0] * n  # characters sent so far, by choice (logprobs' text_offset)

    def event(index: int, text: str, finish: str | None = None, logprobs: CompletionLogprobs | None = None) -> str:
        offsets[index] += len(text)
        choice = TextChoice(index=index, text=text, finish_reason=finish, logprobs=logprobs)
        return Completion(id=rid, model=route.name, choices=[choice]).model_dump_json(exclude_none=True)

    unechoed = echo  # sent before the first delta, then None
    results: list[ChatResult] = []
    async for delta in deltas:
        i = delta.index
        if unechoed is not None:  # the prompt's logprobs come with the first choice's first delta
            scored = delta.prompt_logprobs
            for j in range(n):
                lps = completion_logprobs(token_bytes, scored, unechoed.ids) if top is not None and scored else None
                yield event(j, unechoed.text, logprobs=lps)
            unechoed = None
        lps = None
        if top is not None and delta.logprobs:
            lps = completion_logprobs(token_bytes, delta.logprobs, [lp.token for lp in delta.logprobs], offsets[i])
        if delta.content or lps:
            yield event(i, delta.content, logprobs=lps)
        if delta.result is not None:
            results.append(delta.result)
            yield event(i, "", delta.finish_reason)
    if len(results) == n:
        spend(request, results)
        if include_usage:
            yield Completion(id=rid, model=route.name, choices=[], usage=usage_of(results)).model_dump_json(
                exclude_none=True
            )


def sse(events: AsyncIterator[str]) -> StreamingResponse:
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
