"""The FastAPI application: wiring of routes, auth, limits, metrics and the model's lifecycle."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from contextlib import asynccontextmanager
from importlib.resources import files
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response

from qwenkit.model import Model
from qwenkit.serve import http_errors, openapi
from qwenkit.serve.http_errors import ApiError
from qwenkit.serve.metrics import Metrics
from qwenkit.serve.middleware import AccessLog, BodyLimit
from qwenkit.serve.openai_routes import router as openai_router
from qwenkit.serve.openapi import ModelLimits, route_errors
from qwenkit.serve.protocol.server import Health, LoadLoraAdapterRequest, ModelCard, ModelList, UnloadLoraAdapterRequest
from qwenkit.serve.responses_routes import ResponseStore
from qwenkit.serve.responses_routes import router as responses_router
from qwenkit.serve.routing import ModelRoutes
from qwenkit.serve.security import ApiKeys, RateLimiter, bearer_token, key_id
from qwenkit.serve.settings import ServeSettings
from qwenkit.serve.tokens_routes import router as tokens_router

log = logging.getLogger("qwenkit.serve")


class _ModelHolder:
    """Loads the model on a background thread so /health can answer 503 meanwhile."""

    def __init__(self, load: Callable[[], Model], settings: ServeSettings) -> None:
        self._load = load
        self._settings = settings
        self.model: Model | None = None
        self._routes: ModelRoutes | None = None
        self.error: str | None = None
        self._thread = threading.Thread(target=self._run, name="qwenkit-load", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        try:
            model = self._load()
            model.media = self._settings.media()  # for every route that loads images (chat, responses, tokenize)
            self._routes = ModelRoutes.for_model(
                model,
                served_name=self._settings.served_name,
                aliases=self._settings.model_aliases,
                lora=self._settings.lora,
            )
            self.model = model
        except Exception as exc:  # reported through /health and every request
            log.error("model failed to load: %s", exc)
            self.error = str(exc)

    def ready(self) -> Model:
        if self.model is None:
            message = f"the model failed to load: {self.error}" if self.error else "the model is still loading"
            raise ApiError(503, message, code="model_not_ready", headers={"Retry-After": "5"})
        return self.model

    def routes(self) -> ModelRoutes:
        """The names requests may use (once the model is ready)."""
        self.ready()
        assert self._routes is not None  # set before the model is published
        return self._routes

    def close(self) -> None:
        self._thread.join(timeout=600)
        if self.model is not None:
            self.model.close()


def _runtime_lora(app: FastAPI, holder: _ModelHolder, authorize: Callable[..., Any]) -> None:
    """vLLM's `/v1/load_lora_adapter` and `/v1/unload_lora_adapter` (only with
    `--allow-runtime-lora` and API keys; without the flag these routes do not exist: 404).

    Unloading removes the name only: llama.cpp may free an adapter's tensors only once no context
    applies it, so the engine keeps the adapter (its memory, and its name, which cannot be loaded
    again) until the server restarts; requests already running on it finish on it."""
    lock = asyncio.Lock()  # one load or unload at a time: the name check and the route agree

    @app.post(
        "/v1/load_lora_adapter",
        dependencies=[Depends(authorize)],
        responses=route_errors(400, 401, 429, 500, 503),
    )
    async def load_lora_adapter(body: LoadLoraAdapterRequest) -> ModelCard:
        """Load a LoRA adapter over the base model; requests select it with `model` = `lora_name`."""
        routes = holder.routes()
        model = holder.ready()
        name = body.lora_name
        async with lock:
            if name in routes.names():
                raise ApiError(400, f"the name {name!r} is already taken on this server", param="lora_name")
            if name in model.engine.adapter_names():
                raise ApiError(
                    400,
                    f"a LoRA adapter named {name!r} was unloaded, but its name stays taken until the server "
                    "restarts (the engine keeps unloaded adapters): choose another name",
                    param="lora_name",
                )
            await run_in_threadpool(model.engine.load_adapter, name, body.lora_path)
            route = routes.add_adapter(name, body.lora_path)
        log.info("loaded the LoRA adapter %s from %s", name, body.lora_path)
        return ModelCard(id=name, root=route.root, parent=route.parent)

    @app.post(
        "/v1/unload_lora_adapter",
        dependencies=[Depends(authorize)],
        responses=route_errors(400, 401, 404, 429, 500, 503),
    )
    async def unload_lora_adapter(body: UnloadLoraAdapterRequest) -> ModelCard:
        """Stop serving an adapter: requests naming it are then a 404 (those running finish).
        Its memory is kept until the server restarts, and its name cannot be loaded again."""
        routes = holder.routes()
        async with lock:
            route = routes.remove_adapter(body.lora_name)
        log.info("unloaded the LoRA adapter %s", body.lora_name)
        return ModelCard(id=body.lora_name, root=route.root, parent=route.parent)


def create_app(load: Callable[[], Model], settings: ServeSettings | None = None) -> FastAPI:
    """An app serving the model `load()` returns (called once, in the background, at start-up)."""
    settings = settings or ServeSettings()
    if settings.allow_runtime_lora and not settings.api_keys:
        raise ValueError("runtime LoRA loading needs API keys (anyone could load files otherwise)")
    holder = _ModelHolder(load, settings)
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
    app.state.routes = holder.routes
    app.state.limiter = RateLimiter(settings.requests_per_minute, settings.tokens_per_minute)
    app.state.metrics = Metrics(lambda: holder.model.engine.stats() if holder.model else None)
    http_errors.install(app)

    def unauthorized(request: Request) -> ApiError | None:
        """The 401 for a request without a valid key (None when the key is fine)."""
        token = bearer_token(request.headers.get("authorization"))
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
        token = bearer_token(request.headers.get("authorization"))
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
    app.include_router(tokens_router, dependencies=[Depends(authorize)])
    app.include_router(responses_router, dependencies=[Depends(authorize)])
    app.state.responses = ResponseStore(settings.max_stored_responses)

    @app.get("/v1/models", dependencies=[Depends(authorize)], responses=route_errors(401, 429, 500, 503))
    async def list_models() -> ModelList:
        """Every name a request's `model` may take (`root`: the model it serves; an adapter's
        `parent` is the base model and its `root` the adapter's file)."""
        cards = holder.routes().cards()
        return ModelList(data=[ModelCard(id=name, root=root, parent=parent) for name, (root, parent) in cards.items()])

    if settings.allow_runtime_lora:
        _runtime_lora(app, holder, authorize)

    @app.get(
        "/health",
        response_model=Health,
        responses={503: {"model": Health, "description": "Loading, or the model failed to load"}},
    )
    async def health() -> JSONResponse:
        if holder.model is None:
            status = "error" if holder.error else "loading"
            return JSONResponse({"status": status}, status_code=503)
        return JSONResponse({"status": "ok"})

    prometheus = {"text/plain": {"schema": {"type": "string", "description": "Prometheus text format 0.0.4"}}}

    @app.get(
        "/metrics",
        response_class=PlainTextResponse,
        responses={200: {"description": "Prometheus metrics", "content": prometheus}},
    )
    async def metrics() -> Response:
        return Response(app.state.metrics.render(), media_type="text/plain; version=0.0.4")

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def index() -> str:
        return files("qwenkit.serve").joinpath("static/index.html").read_text(encoding="utf-8")

    def limits() -> ModelLimits | None:
        model = holder.model
        if model is None:
            return None
        n_ctx = model.engine.n_ctx
        cap = min(settings.max_prompt_tokens or n_ctx - 1, n_ctx - 1)
        return ModelLimits(model.engine.n_vocab, cap, vision=model.engine.vision())

    openapi.install(app, settings, limits)

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
