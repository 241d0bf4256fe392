"""The FastAPI application: wiring of routes, auth, limits, metrics and the model's lifecycle."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from contextlib import asynccontextmanager
from importlib.resources import files

from fastapi import Depends, FastAPI, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import HTMLResponse, JSONResponse, Response

from qwenkit.model import Model
from qwenkit.serve import adapters, http_errors
from qwenkit.serve.http_errors import ApiError
from qwenkit.serve.metrics import Metrics
from qwenkit.serve.middleware import AccessLog, BodyLimit
from qwenkit.serve.openai_routes import router as openai_router
from qwenkit.serve.protocol import ModelList
from qwenkit.serve.security import ApiKeys, RateLimiter, key_id
from qwenkit.serve.settings import ServeSettings

log = logging.getLogger("qwenkit.serve")


class _ModelHolder:
    """Loads the model on a background thread so /health can answer 503 meanwhile."""

    def __init__(self, load: Callable[[], Model]) -> None:
        self._load = load
        self.model: Model | None = None
        self.error: str | None = None
        self._thread = threading.Thread(target=self._run, name="qwenkit-load", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        try:
            self.model = self._load()
        except Exception as exc:  # reported through /health and every request
            log.error("model failed to load: %s", exc)
            self.error = str(exc)

    def ready(self) -> Model:
        if self.model is None:
            message = f"the model failed to load: {self.error}" if self.error else "the model is still loading"
            raise ApiError(503, message, code="model_not_ready", headers={"Retry-After": "5"})
        return self.model

    def close(self) -> None:
        self._thread.join(timeout=600)
        if self.model is not None:
            self.model.close()


def create_app(load: Callable[[], Model], settings: ServeSettings | None = None) -> FastAPI:
    """An app serving the model `load()` returns (called once, in the background, at start-up)."""
    settings = settings or ServeSettings()
    holder = _ModelHolder(load)
    keys = ApiKeys(settings.api_keys)

    @asynccontextmanager
    async def lifespan(_: FastAPI):
        holder.start()
        yield
        holder.close()

    app = FastAPI(
        title="qwenkit",
        version="0.1.0",
        lifespan=lifespan,
        description="An OpenAI-compatible server for the Qwen model family.",
    )
    app.state.settings = settings
    app.state.ready_model = holder.ready
    app.state.limiter = RateLimiter(settings.requests_per_minute, settings.tokens_per_minute)
    app.state.metrics = Metrics(lambda: holder.model.engine.stats() if holder.model else None)
    http_errors.install(app)

    def unauthorized(request: Request) -> ApiError | None:
        """The 401 for a request without a valid key (None when the key is fine)."""
        header = request.headers.get("authorization", "")
        token = header[7:].strip() if header.lower().startswith("bearer ") else None
        if keys.check(token):
            return None
        return ApiError(
            401,
            "a valid API key is required (Authorization: Bearer KEY)",
            code="invalid_api_key",
            headers={"WWW-Authenticate": "Bearer"},
        )

    app.state.unauthorized = unauthorized

    async def authorize(request: Request) -> None:
        header = request.headers.get("authorization", "")
        token = header[7:].strip() if header.lower().startswith("bearer ") else None
        refusal = unauthorized(request)
        if refusal is not None:
            raise refusal
        bucket = key_id(token) if keys.enabled else (request.client.host if request.client else "-")
        request.state.bucket = bucket
        wait = app.state.limiter.admit(bucket)
        if wait is not None:
            raise ApiError(
                429,
                "rate limit reached for this API key",
                code="rate_limit_exceeded",
                headers={"Retry-After": str(max(1, int(wait + 0.999)))},
            )

    app.include_router(openai_router, dependencies=[Depends(authorize)])

    @app.get("/v1/models", dependencies=[Depends(authorize)])
    async def list_models() -> ModelList:
        model = holder.ready()
        return ModelList(data=adapters.cards(settings.served_name or model.name, settings.lora))

    @app.get("/health")
    async def health() -> JSONResponse:
        if holder.model is None:
            status = "error" if holder.error else "loading"
            return JSONResponse({"status": status}, status_code=503)
        return JSONResponse({"status": "ok"})

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(app.state.metrics.render(), media_type="text/plain; version=0.0.4")

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def index() -> str:
        return files("qwenkit.serve").joinpath("static/index.html").read_text(encoding="utf-8")

    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(settings.cors_origins),
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "Content-Type"],
        )
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)
    app.add_middleware(AccessLog, on_done=app.state.metrics.count_request)
    return app
