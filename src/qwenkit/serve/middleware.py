"""ASGI middleware: request ids and access log, and the request body size limit."""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Callable

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from qwenkit.serve.http_errors import error_body
from qwenkit.serve.security import bearer_token, key_id

access_log = logging.getLogger("qwenkit.access")


class AccessLog:
    """Gives each request an id (`X-Request-Id`) and logs one line: never the prompt's text."""

    def __init__(self, app: ASGIApp, on_done: Callable[[Scope, int], None] | None = None) -> None:
        self.app = app
        self.on_done = on_done

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        rid = uuid.uuid4().hex[:16]
        scope.setdefault("state", {})["request_id"] = rid
        started = time.perf_counter()
        sizes = {"in": 0, "out": 0, "status": 0}

        async def counting_receive() -> Message:
            message = await receive()
            sizes["in"] += len(message.get("body", b""))
            return message

        async def tagging_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                sizes["status"] = message["status"]
                message.setdefault("headers", []).append((b"x-request-id", rid.encode()))
            elif message["type"] == "http.response.body":
                sizes["out"] += len(message.get("body", b""))
            await send(message)

        try:
            await self.app(scope, counting_receive, tagging_send)
        except Exception:
            # Starlette's outermost error middleware sends the 500 after this one has given
            # up: count and log it as a 500, not as a request the client abandoned (499).
            sizes["status"] = sizes["status"] or 500
            raise
        finally:
            if self.on_done is not None:
                self.on_done(scope, sizes["status"])
            access_log.info(
                "%s %s %s %s key=%s in=%dB out=%dB %.0fms",
                rid,
                scope["method"],
                scope["path"],
                sizes["status"] or "-",
                key_id(bearer_token(Headers(scope=scope).get("authorization"))),
                sizes["in"],
                sizes["out"],
                (time.perf_counter() - started) * 1000,
            )


class BodyLimit:
    """Answers 413 to a request body over `max_bytes`, whether it declares its length or not.

    The body is read here (up to the limit) and replayed to the app, so an oversized body is
    refused before any handler sees a byte of it.
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            return await self.app(scope, receive, send)
        for name, value in scope.get("headers", ()):
            if name == b"content-length" and value.isdigit() and int(value) > self.max_bytes:
                return await self._reject(send)
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.max_bytes:
                return await self._reject(send)
            if not message.get("more_body", False):
                break
        body, replayed = b"".join(chunks), False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # after the body: wait for the client to disconnect

        await self.app(scope, replay, send)
        return None

    async def _reject(self, send: Send) -> None:
        body = json.dumps(error_body(413, f"the request body is larger than {self.max_bytes} bytes")).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
            }
        )
        await send({"type": "http.response.body", "body": body})
