"""Helpers for the `qwenkit serve` tests: the server in this process, or a live process on 127.0.0.1.

Most tests talk to `create_app` in this process (`AppServer`, through httpx's `ASGITransport`:
no socket, no process start-up), shared by every module asking for the same configuration through
the session fixture `app_server` (conftest.py). What needs a real socket or process (a dropped
connection cancelling a request, incremental streaming, clusters, the browser, the `qwenkit serve`
command itself) starts one with `start_server`. Both answer the same `client()`, `http()` and
`metrics()`. Every wait here is a bounded loop; nothing asserts on timings.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import anyio
import anyio.from_thread
import httpx
import openai
from anyio.from_thread import BlockingPortal
from starlette.types import ASGIApp

if TYPE_CHECKING:
    from fastapi import FastAPI

    from qwenkit.model import Model

REPO = Path(__file__).resolve().parents[1]
QWENKIT = REPO / ".venv" / "bin" / "qwenkit"
START_TIMEOUT_S = 90.0

# Qwen special-token ids (shared by Qwen2.5 and Qwen3 vocabularies).
IM_END = 151645
ENDOFTEXT = 151643
THINK_CLOSE = 151668


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ray_node(**resources: float) -> dict[str, object]:
    """A Ray test node's arguments: on 127.0.0.1, small, with its own agent ports (the nodes share one
    machine), and any custom `resources`."""
    return {
        "num_cpus": 1,
        **({"resources": resources} if resources else {}),
        "node_ip_address": "127.0.0.1",
        "object_store_memory": 100 * 2**20,
        "dashboard_agent_listen_port": free_port(),
        "metrics_export_port": free_port(),
        "metrics_agent_port": free_port(),
        "runtime_env_agent_port": free_port(),
    }


class Endpoint:
    """What the tests ask of a server, a process or an app in this process: clients and metrics.
    `url` is its base address (no trailing slash); `http()` is an httpx client on it."""

    url: str

    def http(self, **kw) -> httpx.Client:
        kw.setdefault("timeout", 120.0)
        return httpx.Client(base_url=self.url, **kw)

    def client(self, api_key: str = "unused", **kw) -> openai.OpenAI:
        kw.setdefault("max_retries", 0)
        kw.setdefault("timeout", 120.0)
        return openai.OpenAI(base_url=f"{self.url}/v1", api_key=api_key, http_client=self.http(), **kw)

    def get(self, path: str, **kw) -> httpx.Response:
        with self.http() as http:
            return http.get(path, **kw)

    def post(self, path: str, **kw) -> httpx.Response:
        with self.http() as http:
            return http.post(path, **kw)

    def healthy(self) -> bool:
        try:
            return self.get("/health", timeout=5).status_code == 200
        except httpx.HTTPError:
            return False

    def metrics_text(self) -> str:
        r = self.get("/metrics", timeout=10)
        r.raise_for_status()
        return r.text

    def metrics(self) -> dict[str, float]:
        return parse_metrics(self.metrics_text())

    def metric(self, name: str, **labels: str) -> float:
        """One sample's value (0.0 when absent, e.g. a labelled counter never incremented)."""
        return self.metrics().get(sample_key(name, **labels), 0.0)

    def wait_metric(self, name: str, predicate, *, timeout_s: float = 30.0, **labels: str) -> float:
        """Poll a metric until `predicate(value)` holds; returns the last value either way."""
        deadline = time.monotonic() + timeout_s
        value = self.metric(name, **labels)
        while not predicate(value) and time.monotonic() < deadline:
            time.sleep(0.1)
            value = self.metric(name, **labels)
        return value


class Server(Endpoint):
    """A running `qwenkit serve` subprocess on 127.0.0.1."""

    def __init__(self, proc: subprocess.Popen, port: int, log_path: Path) -> None:
        self.proc = proc
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.log_path = log_path

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    # ----- lifecycle ------------------------------------------------------------------------

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)


def sample_key(name: str, **labels: str) -> str:
    if not labels:
        return name
    inner = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    return f"{name}{{{inner}}}"


_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})?\s+(\S+)$")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def parse_metrics(text: str) -> dict[str, float]:
    """Prometheus text format to {'name{label="v",...}': value} with labels sorted by name."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = _SAMPLE.match(line)
        if not m:
            continue
        labels = dict(_LABEL.findall(m.group(3) or ""))
        out[sample_key(m.group(1), **labels)] = float(m.group(4))
    return out


def metric_families(text: str) -> set[str]:
    """Names declared by `# TYPE` lines."""
    return {line.split()[2] for line in text.splitlines() if line.startswith("# TYPE ")}


@contextlib.contextmanager
def start_server(
    model: str | Path,
    *args: str,
    parallel: int = 2,
    ctx: int = 2048,
    threads: int | None = 1,
    env: dict[str, str] | None = None,
) -> Iterator[Server]:
    """Start `qwenkit serve` on a free port of 127.0.0.1, wait for /health, stop it afterwards.

    One llama.cpp thread by default: on a small, busy machine (tests run beside other work)
    llama.cpp's spinning worker threads make decoding 10-100x slower than a single thread.
    """
    port = free_port()
    launcher = [str(QWENKIT)] if QWENKIT.exists() else [sys.executable, "-c", "from qwenkit.cli import main; main()"]
    cmd = [
        *launcher,
        "serve",
        "--model",
        str(model),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--parallel",
        str(parallel),
        "--ctx",
        str(ctx),
        *(["--threads", str(threads)] if threads else []),
        *args,
    ]
    full_env = dict(os.environ)  # QWENKIT_HOME and friends pass through
    full_env.pop("QWENKIT_API_KEYS", None)
    full_env.update(env or {})
    with tempfile.NamedTemporaryFile(prefix=f"qwenkit-serve-{port}-", suffix=".log", delete=False) as log_file:
        log_path = Path(log_file.name)
        proc = subprocess.Popen(cmd, stdout=log_file, stderr=subprocess.STDOUT, env=full_env, cwd=str(REPO))
    server = Server(proc, port, log_path)
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while not server.healthy():
            if proc.poll() is not None:
                raise RuntimeError(f"qwenkit serve exited with {proc.returncode}:\n{server.log()[-4000:]}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"qwenkit serve not healthy after {START_TIMEOUT_S:.0f}s:\n{server.log()[-4000:]}")
            time.sleep(0.2)
        yield server
    finally:
        server.stop()
        with contextlib.suppress(OSError):
            log_path.unlink()


# ----- small helpers for the tests -----------------------------------------------------------


def sse_events(response: httpx.Response) -> Iterator[dict | str]:
    """The `data:` payloads of an SSE response: parsed JSON objects, or the string '[DONE]'."""
    for line in response.iter_lines():
        if not line.startswith("data:"):
            continue
        data = line[5:].strip()
        yield data if data == "[DONE]" else json.loads(data)


def assert_openai_error(response: httpx.Response, status: int) -> dict:
    """The response has `status` and an OpenAI-shaped error body that leaks nothing internal."""
    assert response.status_code == status, (response.status_code, response.text)
    body = response.json()
    assert set(body) == {"error"}, body
    error = body["error"]
    assert isinstance(error["message"], str) and error["message"], body
    assert isinstance(error["type"], str) and error["type"], body
    assert "param" in error and "code" in error, body
    text = response.text
    for leak in ("Traceback", 'File "', "/site-packages/", str(REPO), '.py"'):
        assert leak not in text, f"internal detail {leak!r} in an error body: {text}"
    return error


@contextlib.contextmanager
def slot_held(server: Server, max_tokens: int = 600) -> Iterator[None]:
    """Keep one decode slot busy with a long streamed reply (end tokens barred) until the block ends."""
    body = {
        "messages": [{"role": "user", "content": "Write a long story."}],
        "max_tokens": max_tokens,
        "stream": True,
        "logit_bias": {str(IM_END): -100, str(ENDOFTEXT): -100},
    }
    with server.http() as http, http.stream("POST", "/v1/chat/completions", json=body) as response:
        events = sse_events(response)  # kept referenced: a collected generator would close the stream
        for event in events:
            if event != "[DONE]" and event["choices"][0]["delta"].get("content"):
                break
        yield


# ----- the server in this process ------------------------------------------------------------

T = TypeVar("T")
_asgi_log = logging.getLogger("qwenkit.test.asgi")  # unhandled app errors, beside the server's own "qwenkit.*"


class _Body(httpx.AsyncByteStream):
    """A sync request body handed to the async transport as it came (chunked stays chunked)."""

    def __init__(self, stream: httpx.SyncByteStream) -> None:
        self._stream = stream

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for part in self._stream:
            yield part


class _PortalTransport(httpx.BaseTransport):
    """A sync httpx transport onto httpx's `ASGITransport`, on the event loop `portal` runs (the
    app's loop, on a thread of its own). Responses come whole: a stream is read to its end first,
    so what needs a response read as it comes (a dropped connection, a held slot) needs a `Server`."""

    def __init__(self, asgi: httpx.ASGITransport, portal: BlockingPortal) -> None:
        self._asgi = asgi
        self._portal = portal

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        timeout_s = (request.extensions.get("timeout") or {}).get("read") or START_TIMEOUT_S

        async def forward() -> tuple[int, list[tuple[bytes, bytes]], bytes]:
            with anyio.fail_after(timeout_s):
                inner = httpx.Request(
                    request.method, request.url, headers=request.headers, stream=_Body(request.stream)
                )
                response = await self._asgi.handle_async_request(inner)
                return response.status_code, response.headers.raw, await response.aread()

        status, headers, body = self._portal.call(forward)
        return httpx.Response(status, headers=headers, content=body)


def _logged_errors(app: ASGIApp) -> ASGIApp:
    """`app`, logging an exception that escapes it as uvicorn does (the transport then answers 500)."""

    async def wrapped(scope, receive, send) -> None:
        try:
            await app(scope, receive, send)
        except Exception:
            _asgi_log.exception("Exception in ASGI application")
            raise

    return wrapped


class _LogLines(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


class AppServer(Endpoint):
    """`create_app` served in this process: no socket, no process start-up. `log()` is what the
    qwenkit loggers said while it ran (any in-process server's lines: tests run one at a time)."""

    url = "http://qwenkit.test"

    def __init__(self, app: FastAPI, portal: BlockingPortal, log: _LogLines) -> None:
        self._app = app
        self._transport = _PortalTransport(
            httpx.ASGITransport(app=_logged_errors(app), raise_app_exceptions=False), portal
        )
        self._log = log

    @property
    def model(self) -> Model:
        """The model it serves (for checks against the Python API)."""
        return self._app.state.routes().resolve("default").model

    def http(self, **kw) -> httpx.Client:
        kw.setdefault("timeout", 120.0)
        return httpx.Client(base_url=self.url, transport=self._transport, **kw)

    def log(self) -> str:
        return "\n".join(self._log.lines)


@contextlib.contextmanager
def serve_in_process(
    model: str | Path,
    *,
    parallel: int = 2,
    ctx: int = 2048,
    threads: int | None = 1,
    max_queue: int = 64,
    engine: str = "auto",
    lora: tuple[tuple[str, str], ...] = (),
    mmproj: Path | None = None,
    image_max_tokens: int | None = None,
    **settings: Any,
) -> Iterator[AppServer]:
    """The app `qwenkit serve --model MODEL` builds, with the load options given here and the other
    `ServeSettings` fields in `settings` (as `serve` derives them: aliases, `max_n` within
    `parallel`), up and healthy; closed afterwards."""
    from qwenkit import load
    from qwenkit.catalog.fetch import resolve
    from qwenkit.serve import ServeSettings, create_app

    local = resolve(str(model), progress=False)
    aliases = (local.name, local.path.name, *([str(model)] if local.source != "local" else []))
    settings["max_n"] = min(settings.get("max_n", ServeSettings.max_n), parallel)
    serve_settings = ServeSettings(model_aliases=aliases, lora=lora, **settings)

    def load_model():
        return load(
            str(model),
            n_ctx=ctx,
            n_threads=threads,
            n_parallel=parallel,
            max_waiting=max_queue,
            progress=False,
            engine=engine,
            lora=dict(lora),
            mmproj=mmproj,
            image_max_tokens=image_max_tokens,
        )

    app = create_app(load_model, serve_settings)
    log = _LogLines()
    qwenkit_log = logging.getLogger("qwenkit")
    level = qwenkit_log.level
    qwenkit_log.setLevel(logging.INFO)
    qwenkit_log.addHandler(log)
    try:
        with (
            anyio.from_thread.start_blocking_portal() as portal,
            portal.wrap_async_context_manager(app.router.lifespan_context(app)),
        ):
            server = AppServer(app, portal, log)
            deadline = time.monotonic() + START_TIMEOUT_S
            while (health := server.get("/health")).status_code != 200:
                if health.json().get("status") == "error" or time.monotonic() > deadline:
                    raise RuntimeError(f"the app did not become healthy ({health.text}):\n{server.log()[-4000:]}")
                time.sleep(0.05)
            yield server
    finally:
        qwenkit_log.removeHandler(log)
        qwenkit_log.setLevel(level)


@contextlib.contextmanager
def running_meanwhile(server: Endpoint, request: Callable[[], T]) -> Iterator[Future[T]]:
    """`request()` on a thread of its own, seen running in the engine (bounded wait) before the
    block starts; its future holds the result (the block's end waits for it)."""
    with ThreadPoolExecutor(1) as pool:
        future = pool.submit(request)
        server.wait_metric("qwenkit_requests_running", lambda v: v >= 1 or future.done(), timeout_s=60)
        yield future
