"""The Ray Serve application: an ingress (keys, cluster rate limits, /metrics, /health) in front of
replicas that each run qwenkit's own OpenAI app on one engine.

Ray Serve config files name `qwenkit.serve.cluster.app:build_app` as `import_path` and pass
`ClusterOptions` fields as `args`.
"""

# No `from __future__ import annotations`: Ray Serve hands FastAPI the ingress methods, whose
# annotations (Request) must be real objects for FastAPI to see them.

import asyncio
import json
import logging
import threading
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager
from typing import Any, cast

import ray
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from ray import serve
from ray.actor import ActorHandle
from ray.exceptions import NodeDiedError, ObjectLostError, RayActorError, WorkerCrashedError
from ray.serve._private.constants import SERVE_CONTROLLER_NAME, SERVE_NAMESPACE
from ray.serve.deployment import Application
from ray.serve.handle import DeploymentHandle, DeploymentResponseGenerator
from starlette.types import Message

from qwenkit.catalog.fetch import resolve
from qwenkit.serve import create_app
from qwenkit.serve.cluster.asgi import call_asgi
from qwenkit.serve.cluster.options import ClusterOptions
from qwenkit.serve.cluster.prefix import prefix_keys
from qwenkit.serve.cluster.responses import RESPONSES_PATH, ResponseOwners, made_response, named_response
from qwenkit.serve.cluster.state import ClusterState
from qwenkit.serve.http_errors import error_body, error_response
from qwenkit.serve.options import served_aliases
from qwenkit.serve.security import ApiKeys, bearer_token, key_id

log = logging.getLogger("qwenkit.serve.cluster")
REPLICA_HEADER = "x-qwenkit-replica"
ATTEMPTS_HEADER = "x-qwenkit-attempts"
REPORT_EVERY_S = 1.0
NAMESPACE = "qwenkit"
ACCEPTED: Message = {"type": "qwenkit.accepted"}  # a replica's first message: it has taken the request
_GOING = {"STOPPING", "STOPPED"}  # Ray Serve replica states of a replica on its way out
# A replica (its process or its node) lost: the request may go to another one if nothing was sent yet.
REPLICA_LOST = (RayActorError, WorkerCrashedError, NodeDiedError, ObjectLostError)


def cluster_state(options: ClusterOptions) -> ActorHandle[ClusterState]:
    """The application's state actor, created by whichever part asks first."""
    actor: Any = ray.remote(num_cpus=0)(ClusterState)
    return actor.options(
        name=f"{options.name}-state",
        namespace=NAMESPACE,
        get_if_exists=True,
        lifetime="detached",
        resources=options.ingress_resources,
        max_restarts=-1,  # restarted (limits and metrics start afresh) if its node is lost
        max_task_retries=-1,
    ).remote(options.requests_per_minute, options.tokens_per_minute)


class _SpendOnlyLimiter:
    """A replica's limiter: admission happened at the ingress; tokens spent go to the cluster's limiter."""

    def __init__(self, state: ActorHandle[ClusterState]) -> None:
        self._state = state

    def admit(self, bucket: str) -> float | None:
        return None

    def spend(self, bucket: str, tokens: int) -> None:
        if tokens > 0:
            self._state.spend.remote(bucket, tokens)


class ModelReplica:
    """One engine and the single-server app around it; requests arrive whole from the ingress."""

    def __init__(self, options: ClusterOptions) -> None:
        self.replica_id = serve.get_replica_context().replica_id.unique_id
        self.state = cluster_state(options)
        local = resolve(options.model, progress=False)
        model = options.load()
        aliases = served_aliases(local, options.model)
        self.app = create_app(lambda: model, options.settings(aliases))
        self.app.state.limiter = _SpendOnlyLimiter(self.state)
        self._lifespan: AbstractAsyncContextManager[Any] | None = None
        self._stop = threading.Event()
        threading.Thread(target=self._report, name="qwenkit-report", daemon=True).start()

    def _report(self) -> None:
        while not self._stop.wait(REPORT_EVERY_S):
            self.state.report.remote(self.replica_id, self.app.state.metrics.render().decode())

    async def forward(self, request: dict[str, Any]) -> AsyncIterator[Message]:
        """`ACCEPTED`, then the app's response messages for one request (tagged with this replica's id)."""
        yield ACCEPTED
        if self._lifespan is None:
            self._lifespan = self.app.router.lifespan_context(self.app)
            await self._lifespan.__aenter__()
        async for message in call_asgi(self.app, request):
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), (REPLICA_HEADER.encode(), self.replica_id.encode())]
            yield message

    def __del__(self) -> None:
        self._stop.set()


def _is_event_stream(start: Message) -> bool:
    return any(k.lower() == b"content-type" and v.startswith(b"text/event-stream") for k, v in start.get("headers", []))


def _committed(head: list[Message]) -> bool:
    """Whether the messages a replica sent so far commit the request to it: a whole response once it
    has all come (it comes at once); an event stream once its second event arrives (the first may
    come before the request has a decoding slot: a chat stream's role event) or it ends."""
    if not head:
        return False
    bodies = [m for m in head if m["type"] == "http.response.body"]
    if any(not m.get("more_body", False) for m in bodies):
        return True
    return _is_event_stream(head[0]) and sum(bool(m.get("body")) for m in bodies) >= 2


async def _body(head: list[Message], stream: DeploymentResponseGenerator[Message], sse: bool) -> AsyncIterator[bytes]:
    """The response body (`head`: what was already received); a replica lost mid-stream ends an
    event stream with an error event."""
    for message in head:
        if message["type"] == "http.response.body" and message.get("body"):
            yield message["body"]
    try:
        async for message in stream:
            if message["type"] == "http.response.body" and message.get("body"):
                yield message["body"]
    except Exception as exc:
        log.warning("a replica failed mid-response: %s", exc)
        if sse:
            error = error_body(503, "the model replica serving this stream was lost", code="replica_lost")
            yield f"data: {json.dumps(error)}\n\n".encode()
    finally:
        stream.cancel()


ingress_app = FastAPI(title="qwenkit (Ray Serve)")


@serve.ingress(ingress_app)
class Ingress:
    """Checks keys and the cluster's rate limits, then streams the request through a model replica."""

    def __init__(self, model: DeploymentHandle, options: ClusterOptions) -> None:
        self.model = model
        self.options = options
        self.keys = ApiKeys(options.api_keys)
        self.state = cluster_state(options)
        self.response_owners = ResponseOwners()
        self.controller = ray.get_actor(SERVE_CONTROLLER_NAME, namespace=SERVE_NAMESPACE)  # Serve's replica counts

    @ingress_app.get("/health")
    async def health(self) -> JSONResponse:
        """Replicas wanted and up/ready (as Ray Serve counts them): 200 while one is ready (`degraded`
        when fewer than wanted), 503 when none is or Serve's controller cannot say."""
        try:
            replicas = await self._replica_counts()
        except Exception as exc:  # the controller is gone or restarting: unknown is not healthy
            log.warning("health: Ray Serve's controller did not answer: %s", exc)
            reason = f"Ray Serve's controller did not answer ({type(exc).__name__})"
            return JSONResponse({"status": "unavailable", "reason": reason}, 503)
        target, ready = replicas["target"], replicas["ready"]
        if ready:
            status = "ok" if ready >= target else "degraded"
        else:
            status = "ok" if target == 0 else "loading" if replicas["up"] else "unavailable"  # 0: scaled to zero
        return JSONResponse({"status": status, "replicas": replicas}, 200 if ready or not target else 503)

    async def _replica_counts(self) -> dict[str, int]:
        details = await self.controller.get_serve_instance_details.remote()
        context = serve.get_replica_context()
        app = details.get("applications", {}).get(context.app_name, {})
        model = app.get("deployments", {}).get("model", {})
        states = [getattr(r.get("state"), "value", r.get("state")) for r in model.get("replicas", [])]
        return {
            "target": int(model.get("target_num_replicas", 0)),
            "up": sum(state not in _GOING for state in states),
            "ready": states.count("RUNNING"),
        }

    async def _start(
        self, forwarded: dict[str, Any]
    ) -> tuple[DeploymentResponseGenerator[Message], list[Message], int] | Response:
        """The response stream and its first messages (up to `_committed`), from the first replica
        that answers; a request whose replica is lost before then is sent again (at most
        `max_retries` times): the client has received nothing yet."""
        for attempt in range(1, self.options.max_retries + 2):
            stream = cast(
                DeploymentResponseGenerator[Message], self.model.options(stream=True).forward.remote(forwarded)
            )
            try:
                first = await asyncio.wait_for(stream.__anext__(), self.options.replica_wait_s)
                head = [] if first["type"] == ACCEPTED["type"] else [first]
                while not _committed(head):
                    head.append(await stream.__anext__())
                return stream, head, attempt
            except TimeoutError:
                stream.cancel()
                message = f"no model replica took the request within {self.options.replica_wait_s:g} s; retry"
                return error_response(503, message, headers={"Retry-After": "2"})
            except asyncio.CancelledError:  # the client left
                stream.cancel()
                raise
            except REPLICA_LOST as exc:
                stream.cancel()
                log.warning("attempt %d: the replica was lost before it answered: %s", attempt, exc)
            except Exception as exc:  # e.g. the deployment is gone
                stream.cancel()
                log.warning("request failed before its response started: %s", exc)
                break
        return error_response(503, "no model replica could serve the request; retry", headers={"Retry-After": "2"})

    @ingress_app.get("/metrics")
    async def metrics(self) -> Response:
        return Response(await self.state.metrics.remote(), media_type="text/plain; version=0.0.4")

    @ingress_app.api_route("/{path:path}", methods=["GET", "POST"], include_in_schema=False)
    async def forward(self, path: str, request: Request) -> Response:
        path = "/" + path
        token = bearer_token(request.headers.get("authorization"))
        if path.startswith("/v1"):
            if not self.keys.check(token):
                return error_response(
                    401,
                    "a valid API key is required (Authorization: Bearer KEY)",
                    code="invalid_api_key",
                    headers={"WWW-Authenticate": "Bearer"},
                )
            client = request.client.host if request.client else "-"
            wait = await self.state.admit.remote(key_id(token) if self.keys.enabled else client)
            if wait is not None:
                return error_response(
                    429,
                    "rate limit reached for this API key",
                    code="rate_limit_exceeded",
                    headers={"Retry-After": str(max(1, int(wait + 0.999)))},
                )
        body = await request.body()
        if len(body) > self.options.max_body_bytes:
            return error_response(413, f"the request body is larger than {self.options.max_body_bytes} bytes")
        forwarded = {
            "method": request.method,
            "path": path,
            "query": request.url.query,
            "headers": list(request.headers.items()),
            "body": body,
            "client": [request.client.host, request.client.port] if request.client else None,
            "prefix_keys": prefix_keys(path, body) if request.method == "POST" else [],
            "replica": self.response_owners.owner(named_response(request.method, path, body)),
        }
        started = await self._start(forwarded)
        if isinstance(started, Response):
            return started
        stream, head, attempts = started
        start = head[0]
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in start.get("headers", [])}
        headers.pop("content-length", None)
        headers[ATTEMPTS_HEADER] = str(attempts)
        sse = _is_event_stream(start)
        if path == RESPONSES_PATH and request.method == "POST" and start["status"] == 200:
            made = made_response(b"".join(m.get("body", b"") for m in head[1:]), sse)
            if made is not None:  # a follow-up naming it goes to the replica that stored it
                self.response_owners.learn(made, headers.get(REPLICA_HEADER, ""))
        rest = _body(head[1:], stream, sse)
        return StreamingResponse(rest, status_code=start["status"], headers=headers)


def build_app(args: dict[str, Any]) -> Application:
    """The application for `serve.run` or a Ray Serve config file (`args`: `ClusterOptions` fields)."""
    options = ClusterOptions.model_validate(args)
    autoscaling = options.autoscaling()
    replica_options: dict[str, Any] = {
        "ray_actor_options": {"num_cpus": options.cpus_per_replica, "resources": options.replica_resources},
        "max_ongoing_requests": options.n_parallel + options.max_waiting,
        "health_check_period_s": 2,
    }
    if autoscaling is not None:
        replica_options["autoscaling_config"] = autoscaling
    else:
        replica_options["num_replicas"] = options.replicas or 1
    if options.router == "prefix":
        replica_options["request_router_config"] = {
            "request_router_class": "qwenkit.serve.cluster.router:PrefixAwareRouter",
            "request_router_kwargs": {"max_imbalance": options.max_imbalance},
        }
    model = serve.deployment(name="model", **replica_options)(ModelReplica).bind(options)
    ingress = serve.deployment(
        name="ingress",
        ray_actor_options={"num_cpus": 0, "resources": options.ingress_resources},
        max_ongoing_requests=1000,
    )(Ingress)
    return ingress.bind(model, options)
