"""Probes for `qwenkit health`: what a model loaded here, or a running server, says about itself.

A probe generates a short reply for real, times it, and reads memory, queue depth and error
counts where the target exposes them; `qwenkit.bench.health` grades the readings.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import httpx
import openai
from prometheus_client.parser import text_string_to_metric_families

from qwenkit import store
from qwenkit.bench.loadtest import api_base
from qwenkit.bench.memory import meminfo, memory_bandwidth, torch_cuda
from qwenkit.catalog.fetch import resolve

PROBE_PROMPT = "Count from 1 to 200, separated by spaces."
_LOOPBACK = {"127.0.0.1", "localhost", "::1"}


@dataclass
class Probe:
    """What a probe read; None where a reading could not be taken."""

    target: str
    model: str | None = None
    model_bytes: int | None = None
    quantization: str | None = None
    reachable: bool = True
    health_status: int | None = None  # HTTP status of /health (servers only)
    replicas_target: int | None = None  # replicas wanted and ready, from /health (a `serve --ray` cluster)
    replicas_ready: int | None = None
    generation_error: str | None = None  # e.g. "http_429", "connection_error"
    ttft_s: float | None = None
    decode_tokens_per_s: float | None = None
    generated_tokens: int = 0
    bandwidth_bytes_per_s: float | None = None
    expected_decode_tokens_per_s: float | None = None
    memory_available_ratio: float | None = None
    gpu_memory_available_ratio: float | None = None
    requests_waiting: float | None = None
    requests_running: float | None = None
    error_rate: float | None = None
    completions_counted: int = 0
    smaller_models: list[str] = field(default_factory=list)


def _smaller_models(size: int | None) -> list[str]:
    """Embedded models with fewer bytes of weights than `size`, smallest last."""
    if size is None:
        return []
    return [m.name for m in sorted(store.EMBEDDED.values(), key=lambda m: -m.size) if m.size < size * 0.9]


def _memory_ratio() -> float | None:
    info = meminfo()
    if "MemAvailable" not in info or not info.get("MemTotal"):
        return None
    return info["MemAvailable"] / info["MemTotal"]


def _gpu_memory_ratio() -> float | None:
    torch = torch_cuda()
    if torch is None:
        return None
    free, total = torch.cuda.mem_get_info()
    return float(free / total)


def _gpu_bandwidth(torch: Any) -> float:
    """Device-memory bytes/s: the best of five copies of a 256 MiB tensor (read + write)."""
    src = torch.empty(64 * 2**20, dtype=torch.float32, device="cuda")
    dst = torch.empty_like(src)
    best = float("inf")
    for _ in range(5):
        torch.cuda.synchronize()
        start = time.perf_counter()
        dst.copy_(src)
        torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return float(2 * src.numel() * src.element_size() / best)


def probe_model(ref: str, *, engine: str = "auto", threads: int | None = None, probe_tokens: int = 32) -> Probe:
    """Load `ref` here, generate `probe_tokens` tokens, and read this machine's memory."""
    from qwenkit.api import load

    probe = Probe(target=ref)
    local = resolve(ref, progress=False)
    with load(ref, engine=engine, n_threads=threads, n_ctx=1024, n_parallel=1, progress=False) as model:
        probe.model = model.name
        weights, on_gpu = _weight_bytes(model.engine, local.size)
        probe.model_bytes = weights
        probe.quantization = local.quant if weights == local.size else None
        model.chat("Hi", max_tokens=1, temperature=0)  # pages the weights in: a served model is warm
        result = model.chat(PROBE_PROMPT, max_tokens=probe_tokens, temperature=0, think=False)
        probe.ttft_s = result.timings.ttft_s
        probe.decode_tokens_per_s = result.timings.decode_tokens_per_s or None
        probe.generated_tokens = result.usage.completion_tokens
        torch = torch_cuda() if on_gpu else None
        probe.bandwidth_bytes_per_s = _gpu_bandwidth(torch) if torch is not None else memory_bandwidth()
        probe.memory_available_ratio = _memory_ratio()
        probe.gpu_memory_available_ratio = _gpu_memory_ratio()
    probe.expected_decode_tokens_per_s = probe.bandwidth_bytes_per_s / weights
    probe.smaller_models = _smaller_models(probe.model_bytes)
    return probe


def _weight_bytes(engine: Any, file_bytes: int) -> tuple[int, bool]:
    """Bytes of weights read per token, and whether they sit on a GPU (transformers: its parameters)."""
    module = getattr(engine, "model", None)
    parameters = getattr(module, "parameters", None)
    if not callable(parameters):
        return file_bytes, False  # llama.cpp: the GGUF's weights as stored
    params = list(parameters())
    on_gpu = any(p.device.type == "cuda" for p in params)
    return sum(p.numel() * p.element_size() for p in params), on_gpu


def _server_root(url: str) -> str:
    base = api_base(url)
    return base.removesuffix("/v1")


def _read_metrics(http: httpx.Client, root: str, probe: Probe) -> None:
    """Queue depth and the 5xx share of completions, from qwenkit's (or llama-server's) /metrics."""
    try:
        response = http.get(f"{root}/metrics")
    except httpx.HTTPError:
        return
    if response.status_code != 200:
        return
    samples: dict[str, float] = {}
    completions = errors = 0.0
    try:
        for family in text_string_to_metric_families(response.text):
            for s in family.samples:
                samples[s.name] = s.value
                if s.name == "qwenkit_requests_total" and "completions" in s.labels.get("route", ""):
                    completions += s.value
                    errors += s.value if s.labels.get("status", "").startswith("5") else 0
    except ValueError:
        return  # not Prometheus text
    waiting = samples.get("qwenkit_requests_waiting", samples.get("llamacpp:requests_deferred"))
    running = samples.get("qwenkit_requests_running", samples.get("llamacpp:requests_processing"))
    probe.requests_waiting, probe.requests_running = waiting, running
    if "qwenkit_requests_running" in samples or completions:  # a qwenkit server: its counts are complete
        probe.completions_counted = int(completions)
        probe.error_rate = errors / completions if completions else 0.0


def probe_url(url: str, *, api_key: str | None = None, probe_tokens: int = 32, timeout_s: float = 60.0) -> Probe:
    """Ask a server for /health, /metrics and a short streamed reply."""
    root = _server_root(url)
    probe = Probe(target=url)
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    with httpx.Client(timeout=timeout_s, headers=headers) as http:
        try:
            health = http.get(f"{root}/health")
        except httpx.HTTPError:
            probe.reachable = False
            return probe
        probe.health_status = health.status_code
        _read_replicas(health, probe)
        _read_metrics(http, root, probe)  # before the probe adds itself to the queue
    client = openai.OpenAI(base_url=f"{root}/v1", api_key=api_key or "none", max_retries=0, timeout=timeout_s)
    with client:
        _probe_generation(client, probe, probe_tokens)
    if urlparse(root).hostname in _LOOPBACK:
        probe.memory_available_ratio = _memory_ratio()  # the server runs on this machine
    local = _local_model(probe.model)
    if local is not None and probe.decode_tokens_per_s is not None:
        probe.model_bytes, probe.quantization = local.size, local.quant
        probe.bandwidth_bytes_per_s = memory_bandwidth()
        probe.expected_decode_tokens_per_s = probe.bandwidth_bytes_per_s / local.size
    probe.smaller_models = _smaller_models(probe.model_bytes)
    return probe


def _read_replicas(health: httpx.Response, probe: Probe) -> None:
    """Replica counts, where /health reports them (`{"replicas": {"target": 2, "ready": 1}}`)."""
    try:
        replicas = health.json().get("replicas")
    except (ValueError, AttributeError):
        return
    if (
        isinstance(replicas, dict)
        and isinstance(replicas.get("target"), int)
        and isinstance(replicas.get("ready"), int)
    ):
        probe.replicas_target, probe.replicas_ready = replicas["target"], replicas["ready"]


def _local_model(served: str | None) -> store.LocalModel | None:
    """The cached model a server names (qwenkit serves under the store name; llama-server a path)."""
    if not served:
        return None
    for m in store.list_models():
        if served in (m.name, m.path.name, m.path.stem) or Path(served).name == m.path.name:
            return m
    return None


def _probe_generation(client: openai.OpenAI, probe: Probe, probe_tokens: int) -> None:
    try:
        models = client.models.list().data
        probe.model = models[0].id if models else "default"
        started = time.perf_counter()
        stamps: list[float] = []
        tokens = None
        stream = client.chat.completions.create(
            model=probe.model,
            messages=[{"role": "user", "content": PROBE_PROMPT}],
            max_tokens=probe_tokens,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
        with stream:
            for chunk in stream:
                if chunk.usage is not None:
                    tokens = chunk.usage.completion_tokens
                if any(c.delta.content for c in chunk.choices):
                    stamps.append(time.perf_counter())
    except openai.APIStatusError as exc:
        probe.generation_error = f"http_{exc.status_code}"
        return
    except openai.APITimeoutError:
        probe.generation_error = "timeout"
        return
    except (openai.APIError, httpx.HTTPError) as exc:
        probe.generation_error = type(exc).__name__
        return
    if not stamps:
        probe.generation_error = "no_tokens"
        return
    probe.ttft_s = stamps[0] - started
    probe.generated_tokens = tokens if tokens is not None else len(stamps)
    if probe.generated_tokens > 1 and stamps[-1] > stamps[0]:
        probe.decode_tokens_per_s = (probe.generated_tokens - 1) / (stamps[-1] - stamps[0])
