"""Errors in the OpenAI shape, with the right status; nothing internal ever reaches a client."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from qwenkit.engines.base import QueueFull
from qwenkit.errors import QwenkitError
from qwenkit.serve.protocol.server import ErrorDetail, ErrorResponse

log = logging.getLogger("qwenkit.serve")

_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    404: "not_found_error",
    405: "invalid_request_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
    503: "server_unavailable",
    500: "server_error",
}


class ApiError(Exception):
    """An error to send as-is: status, message, and optional code, param and headers."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        code: str | None = None,
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.code, self.param, self.headers = status, message, code, param, headers


def error_body(status: int, message: str, *, code: str | None = None, param: str | None = None) -> dict:
    detail = ErrorDetail(message=message, type=_TYPES.get(status, "invalid_request_error"), param=param, code=code)
    return ErrorResponse(error=detail).model_dump()


def error_response(status: int, message: str, **kw) -> JSONResponse:
    headers = kw.pop("headers", None)
    return JSONResponse(error_body(status, message, **kw), status_code=status, headers=headers)


def _validation_message(exc: RequestValidationError) -> tuple[str, str | None]:
    errors = exc.errors()
    if not errors:
        return "invalid request", None
    first = errors[0]
    loc = [str(p) for p in first.get("loc", ()) if p != "body"]
    param = ".".join(loc) or None
    msg = first.get("msg", "invalid value")
    if first.get("type") == "json_invalid":
        return "the request body is not valid JSON", None
    return (f"{param}: {msg}" if param else msg), param


def install(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api(_: Request, exc: ApiError) -> JSONResponse:
        return error_response(exc.status, exc.message, code=exc.code, param=exc.param, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        # FastAPI parses a JSON body before it runs the auth dependency: a client without a
        # valid key must get its 401, not learn how its body failed to parse.
        unauthorized = getattr(request.app.state, "unauthorized", None)
        refusal = unauthorized(request) if unauthorized is not None else None
        if refusal is not None:
            return error_response(refusal.status, refusal.message, code=refusal.code, headers=refusal.headers)
        message, param = _validation_message(exc)
        return error_response(400, message, param=param)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        return error_response(exc.status_code, str(exc.detail), headers=getattr(exc, "headers", None))

    @app.exception_handler(QueueFull)
    async def _busy(request: Request, exc: QueueFull) -> JSONResponse:
        retry = str(request.app.state.settings.retry_after_s)
        return error_response(429, str(exc), code="server_busy", headers={"Retry-After": retry})

    @app.exception_handler(QwenkitError)
    async def _user(_: Request, exc: QwenkitError) -> JSONResponse:
        return error_response(400, str(exc))

    @app.exception_handler(Exception)
    async def _internal(request: Request, exc: Exception) -> JSONResponse:
        rid = getattr(request.state, "request_id", "-")
        log.exception("request %s failed", rid)
        return error_response(500, f"internal error (request {rid})")
