"""`POST /v1/responses` (OpenAI's Responses API) on the chat completions path.

A request becomes a chat conversation (input items to messages, the stored history of
`previous_response_id` before them), is prepared and run exactly as `/v1/chat/completions`
runs it, and the chat result (reasoning, answer, tool calls) becomes output items: `reasoning`,
`message`, `function_call`. Streamed, the same items are announced with OpenAI's events
(`response.created`, `response.output_item.added`, `response.output_text.delta`, ...,
`response.completed`). Responses are kept for `previous_response_id` in a bounded in-memory
store (the oldest go first; a server restart forgets them).
"""

from __future__ import annotations

import json
from collections import OrderedDict
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse
from pydantic import ValidationError

from qwenkit.results import ChatResult
from qwenkit.serve.http_errors import ApiError
from qwenkit.serve.openai_routes import collect, finish_of, prepare_chat, resolve_route, spend, usage_of
from qwenkit.serve.openapi import route_errors, streamed
from qwenkit.serve.protocol.chat import ChatCompletionRequest
from qwenkit.serve.protocol.common import new_id
from qwenkit.serve.responses_protocol import (
    FunctionCallItem,
    FunctionCallOut,
    FunctionCallOutputItem,
    IncompleteDetails,
    InputImage,
    InputItem,
    InputText,
    MessageItem,
    NamedFunction,
    OutputItem,
    OutputMessage,
    OutputText,
    ReasoningContent,
    ReasoningItem,
    Response,
    ResponseError,
    ResponsesRequest,
    ResponseStatus,
    ResponseUsage,
)
from qwenkit.serve.runner import EngineFailure, TurnStream, run_turn

router = APIRouter()
_ERRORS = route_errors(400, 401, 404, 413, 429, 500, 503)


@dataclass
class StoredResponse:
    response: Response
    messages: list[dict[str, Any]]  # the conversation so far, this response's output included


class ResponseStore:
    """The last `capacity` responses, for `previous_response_id` and `GET /v1/responses/{id}`."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._items: OrderedDict[str, StoredResponse] = OrderedDict()

    def get(self, response_id: str, param: str | None = None) -> StoredResponse:
        stored = self._items.get(response_id)
        if stored is None:
            raise ApiError(
                404,
                f"no stored response {response_id!r} (this server keeps the last {self.capacity}, in memory)",
                code="response_not_found",
                param=param,
            )
        self._items.move_to_end(response_id)
        return stored

    def put(self, stored: StoredResponse) -> None:
        if self.capacity <= 0:
            return
        self._items[stored.response.id] = stored
        while len(self._items) > self.capacity:
            self._items.popitem(last=False)


# ----- request: items to a chat conversation ------------------------------------------------


def input_messages(items: str | Sequence[InputItem]) -> list[dict[str, Any]]:
    """Chat messages for a request's `input`: text is a user message; function calls join the
    assistant message before them; a reasoning item becomes the next assistant message's
    `reasoning_content` (or one of its own when none follows)."""
    if isinstance(items, str):
        return [{"role": "user", "content": items}]
    out: list[dict[str, Any]] = []
    reasoning: str | None = None
    for item in items:
        if isinstance(item, MessageItem):
            message: dict[str, Any] = {"role": item.role, "content": _content(item.content)}
            if item.role == "assistant" and reasoning is not None:
                message["reasoning_content"], reasoning = reasoning, None
            out.append(message)
        elif isinstance(item, FunctionCallItem):
            call = {
                "id": item.call_id,
                "type": "function",
                "function": {"name": item.name, "arguments": item.arguments},
            }
            if not (out and out[-1]["role"] == "assistant"):
                out.append({"role": "assistant", "content": ""})
                if reasoning is not None:
                    out[-1]["reasoning_content"], reasoning = reasoning, None
            out[-1].setdefault("tool_calls", []).append(call)
        elif isinstance(item, FunctionCallOutputItem):
            out.append({"role": "tool", "tool_call_id": item.call_id, "content": item.output})
        else:  # reasoning
            parts = item.content if item.content is not None else item.summary
            reasoning = "".join(p.text for p in parts)
    if reasoning is not None:  # reasoning with no answer after it: an assistant turn of its own
        out.append({"role": "assistant", "content": "", "reasoning_content": reasoning})
    return out


def _content(content: str | Sequence[InputText | InputImage]) -> str | list[dict[str, Any]]:
    """A message item's content as chat content: text, or text and image_url parts."""
    if isinstance(content, str):
        return content
    if not any(isinstance(p, InputImage) for p in content):
        return "".join(p.text for p in content if isinstance(p, InputText))
    return [
        {"type": "image_url", "image_url": {"url": p.image_url}}
        if isinstance(p, InputImage)
        else {"type": "text", "text": p.text}
        for p in content
    ]


def chat_request(body: ResponsesRequest, messages: list[dict[str, Any]]) -> ChatCompletionRequest:
    """The chat completions request that runs this response (validated like one)."""
    choice: Any = body.tool_choice
    if choice is not None and not isinstance(choice, str):
        choice = {"type": "function", "function": {"name": choice.name}}
    fmt = body.text.format if body.text else None
    response_format: dict[str, Any] | None = None
    if fmt is not None and fmt.type == "json_schema":
        response_format = {"type": "json_schema", "json_schema": fmt.as_chat().model_dump(by_alias=True)}
    elif fmt is not None:
        response_format = {"type": fmt.type}
    fields: dict[str, Any] = {
        "messages": ([{"role": "system", "content": body.instructions}] if body.instructions else []) + messages,
        "max_tokens": body.max_output_tokens,
        "temperature": body.temperature,
        "top_p": body.top_p,
        "seed": body.seed,
        "tools": [
            {"type": "function", "function": t.model_dump(exclude_none=True, exclude={"type"})} for t in body.tools
        ]
        if body.tools
        else None,
        "tool_choice": choice,
        "parallel_tool_calls": body.parallel_tool_calls,
        "reasoning_effort": body.reasoning.effort if body.reasoning else None,
        "response_format": response_format,
        "logprobs": body.top_logprobs is not None,
        "top_logprobs": body.top_logprobs,
        "user": body.user,
    }
    try:
        return ChatCompletionRequest.model_validate({k: v for k, v in fields.items() if v is not None})
    except ValidationError as exc:
        first = exc.errors()[0]
        raise ApiError(400, str(first.get("msg", "invalid request")).removeprefix("Value error, ")) from None


# ----- output: chat deltas to items and events ----------------------------------------------


class OutputBuilder:
    """Output items from chat deltas, with the stream events that announce them.

    The whole and the streamed response are built by the same calls, so they agree."""

    def __init__(self, parallel_tool_calls: bool) -> None:
        self.items: list[OutputItem] = []
        self._parallel = parallel_tool_calls
        self._open: ReasoningItem | OutputMessage | None = None
        self._text: list[str] = []

    def feed(self, reasoning: str, content: str, calls: Sequence[Any]) -> list[dict[str, Any]]:
        events: list[dict[str, Any]] = []
        if reasoning:
            if not isinstance(self._open, ReasoningItem):
                events += self._start(ReasoningItem(id=new_id("rs"), status="in_progress"), ReasoningContent(text=""))
            events.append(self._delta("response.reasoning_text.delta", reasoning))
        if content:
            if not isinstance(self._open, OutputMessage):
                events += self._start(OutputMessage(id=new_id("msg"), status="in_progress"), OutputText(text=""))
            events.append({**self._delta("response.output_text.delta", content), "logprobs": []})
        for call in calls:
            if not self._parallel and any(isinstance(i, FunctionCallOut) for i in self.items):
                break
            events += self._close()
            item = FunctionCallOut(id=new_id("fc"), call_id=call.id, name=call.name, arguments="", status="in_progress")
            index = len(self.items)
            self.items.append(item)
            events.append({"type": "response.output_item.added", "output_index": index, "item": item.model_dump()})
            item.arguments, item.status = call.arguments, "completed"
            where = {"item_id": item.id, "output_index": index}
            events.append({"type": "response.function_call_arguments.delta", **where, "delta": call.arguments})
            events.append(
                {
                    "type": "response.function_call_arguments.done",
                    **where,
                    "arguments": call.arguments,
                    "name": call.name,
                }
            )
            events.append({"type": "response.output_item.done", "output_index": index, "item": item.model_dump()})
        return events

    def finish(self, complete: bool) -> list[dict[str, Any]]:
        """Close the open item (an empty message when there is no output at all)."""
        events = self._close(complete)
        if not self.items:
            events += self._start(OutputMessage(id=new_id("msg"), status="in_progress"), OutputText(text=""))
            events += self._close(complete)
        return events

    def _start(self, item: ReasoningItem | OutputMessage, part: OutputText | ReasoningContent) -> list[dict[str, Any]]:
        events = self._close()
        index = len(self.items)
        self.items.append(item)
        self._open, self._text = item, []
        events.append({"type": "response.output_item.added", "output_index": index, "item": item.model_dump()})
        events.append({"type": "response.content_part.added", **self._where(), "part": part.model_dump()})
        return events

    def _delta(self, kind: str, text: str) -> dict[str, Any]:
        self._text.append(text)
        return {"type": kind, **self._where(), "delta": text}

    def _where(self) -> dict[str, Any]:
        assert self._open is not None
        return {"item_id": self._open.id, "output_index": len(self.items) - 1, "content_index": 0}

    def _close(self, complete: bool = True) -> list[dict[str, Any]]:
        item = self._open
        if item is None:
            return []
        text = "".join(self._text)
        where = self._where()
        part: OutputText | ReasoningContent
        if isinstance(item, ReasoningItem):
            reasoning = ReasoningContent(text=text)
            item.content, part = [reasoning], reasoning
            events = [{"type": "response.reasoning_text.done", **where, "text": text}]
        else:
            output = OutputText(text=text)
            item.content, part = [output], output
            events = [{"type": "response.output_text.done", **where, "text": text, "logprobs": []}]
        item.status = "completed" if complete else "incomplete"
        events.append({"type": "response.content_part.done", **where, "part": part.model_dump()})
        events.append(
            {"type": "response.output_item.done", "output_index": where["output_index"], "item": item.model_dump()}
        )
        self._open = None
        return events


def _response(body: ResponsesRequest, rid: str, name: str, status: ResponseStatus, **fields: Any) -> Response:
    choice = body.tool_choice
    return Response(
        id=rid,
        status=status,
        model=name,
        instructions=body.instructions,
        previous_response_id=body.previous_response_id,
        max_output_tokens=body.max_output_tokens,
        parallel_tool_calls=body.parallel_tool_calls,
        temperature=body.temperature,
        top_p=body.top_p,
        tool_choice=choice.model_dump() if isinstance(choice, NamedFunction) else choice or "auto",
        tools=[t.model_dump(exclude_none=True) for t in body.tools or []],
        text={"format": body.text.format.model_dump(by_alias=True)} if body.text else {"format": {"type": "text"}},
        metadata=body.metadata or {},
        store=body.store,
        **fields,
    )


def _finished(body: ResponsesRequest, rid: str, name: str, result: ChatResult, items: list[OutputItem]) -> Response:
    complete = result.finish_reason != "length"
    return _response(
        body,
        rid,
        name,
        "completed" if complete else "incomplete",
        output=items,
        usage=ResponseUsage.of(usage_of([result])),
        incomplete_details=None if complete else IncompleteDetails(reason="max_output_tokens"),
    )


def _conversation(messages: list[dict[str, Any]], result: ChatResult, parallel: bool) -> list[dict[str, Any]]:
    """The history to store: the messages (instructions apart) and this response's answer."""
    _, calls = finish_of(result, parallel)
    answer: dict[str, Any] = {"role": "assistant", "content": result.content}
    if result.reasoning:
        answer["reasoning_content"] = result.reasoning
    if calls:
        answer["tool_calls"] = [call.to_openai() for call in calls]
    return [*messages, answer]


@router.post(
    "/v1/responses",
    response_model=None,
    responses={**streamed(Response, "The response, or with `stream` its events"), **_ERRORS},
)
async def create_response(body: ResponsesRequest, request: Request):
    route = resolve_route(request, body.model)
    store: ResponseStore = request.app.state.responses
    history = store.get(body.previous_response_id, "previous_response_id").messages if body.previous_response_id else []
    messages = history + input_messages(body.input)
    turn = await prepare_chat(route.model, chat_request(body, messages), request, route.options)
    rid = new_id("resp")
    if body.stream:
        deltas = await run_turn(route.model, turn, request.app.state.metrics)  # submit now: a full queue is a 429
        return _sse(_events(body, rid, route.name, deltas, request, messages))
    result = (await collect(route.model, turn, request))[0]
    spend(request, [result])
    output = OutputBuilder(body.parallel_tool_calls)
    output.feed(result.reasoning or "", result.content, result.tool_calls)
    output.finish(result.finish_reason != "length")
    response = _finished(body, rid, route.name, result, output.items)
    if body.store:
        store.put(StoredResponse(response, _conversation(messages, result, body.parallel_tool_calls)))
    return response


@router.get("/v1/responses/{response_id}", operation_id="get_response", responses=route_errors(401, 404, 429, 500, 503))
async def get_response(response_id: str, request: Request) -> Response:
    """A stored response (the last ones this server made with `store`)."""
    request.app.state.routes()  # 503 while the model loads, like every model route
    return request.app.state.responses.get(response_id).response


async def _events(
    body: ResponsesRequest,
    rid: str,
    name: str,
    deltas: TurnStream,
    request: Request,
    messages: list[dict[str, Any]],
) -> AsyncIterator[dict[str, Any]]:
    started = _response(body, rid, name, "in_progress").model_dump()
    yield {"type": "response.created", "response": started}
    yield {"type": "response.in_progress", "response": started}
    output = OutputBuilder(body.parallel_tool_calls)
    result: ChatResult | None = None
    try:
        async for delta in deltas:
            for event in output.feed(delta.reasoning, delta.content, delta.tool_calls):
                yield event
            result = delta.result or result
    except EngineFailure as exc:
        failed = _response(body, rid, name, "failed", error=ResponseError(code="server_error", message=str(exc)))
        yield {"type": "response.failed", "response": failed.model_dump()}
        return
    if result is None:  # the stream was left early (client gone)
        return
    spend(request, [result])
    for event in output.finish(result.finish_reason != "length"):
        yield event
    response = _finished(body, rid, name, result, output.items)
    if body.store:
        request.app.state.responses.put(
            StoredResponse(response, _conversation(messages, result, body.parallel_tool_calls))
        )
    kind = "response.completed" if response.status == "completed" else "response.incomplete"
    yield {"type": kind, "response": response.model_dump()}


def _sse(events: AsyncIterator[dict[str, Any]]) -> StreamingResponse:
    async def body() -> AsyncIterator[str]:
        number = 0
        async for event in events:
            event["sequence_number"] = number
            number += 1
            yield f"event: {event['type']}\ndata: {json.dumps(event, ensure_ascii=False)}\n\n"

    return StreamingResponse(body(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
