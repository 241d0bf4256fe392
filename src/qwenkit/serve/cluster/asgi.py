"""Run one buffered HTTP request through an ASGI app in this process, yielding the response as it comes."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

from starlette.types import ASGIApp, Message


async def call_asgi(app: ASGIApp, request: dict[str, Any]) -> AsyncIterator[Message]:
    """Yield the app's `http.response.*` messages for `request` (method, path, query, headers, body, client).

    Closing the iterator early (the client left) tells the app the client disconnected and cancels it.
    """
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": request["method"],
        "scheme": "http",
        "path": request["path"],
        "raw_path": request["path"].encode(),
        "query_string": request.get("query", "").encode(),
        "root_path": "",
        "headers": [(k.encode("latin-1"), v.encode("latin-1")) for k, v in request["headers"]],
        "client": tuple(request["client"]) if request.get("client") else None,
        "server": ("127.0.0.1", 80),
        "state": {},
    }
    outbox: asyncio.Queue[Message | None] = asyncio.Queue()
    gone = asyncio.Event()
    body_sent = False

    async def receive() -> Message:
        nonlocal body_sent
        if not body_sent:
            body_sent = True
            return {"type": "http.request", "body": request["body"], "more_body": False}
        await gone.wait()
        return {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        await outbox.put(message)

    async def run() -> None:
        try:
            await app(scope, receive, send)
        finally:
            await outbox.put(None)

    task = asyncio.create_task(run())
    try:
        while (message := await outbox.get()) is not None:
            yield message
            if message["type"] == "http.response.body" and not message.get("more_body", False):
                break
        await task  # re-raises what the app raised
    finally:
        gone.set()
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
