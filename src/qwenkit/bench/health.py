"""`qwenkit health`: is a model (loaded here) or a server (by URL) fit to serve, and if not, why.

A probe generates a short reply for real and reads what the target reports about itself; each
check then compares one reading against two thresholds (degraded, unhealthy) and says what to
change. The overall status is the worst check's. Checks and their default thresholds:

| check | reading | degraded | unhealthy |
|---|---|---|---|
| reachable | the server answers, `/health` is 200 | - | no answer, or `/health` not 200 |
| generation | the probe request succeeds | refused with 429 (queue full) | any other failure |
| ttft | seconds to the probe's first token | > 2 s | > 10 s |
| decode | probe tokens/s over what memory bandwidth allows for these weights | < 50% | < 10% |
| memory | available over total memory (RAM, and GPU where torch sees one) | < 10% | < 3% |
| queue | requests waiting for a slot (server `/metrics`) | >= 1 | - |
| errors | share of completions answered 5xx since the server started | > 1% | > 10% |

The expected decode rate is a roofline: decoding one token reads every weight once, so a
machine that streams B bytes/s through memory decodes at most B / (bytes of weights) tokens/s.
B is measured on the spot (the best of five array copies, one thread; on a GPU, a device copy);
llama.cpp on a few CPU threads usually reaches 60-150% of this one-thread figure.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import httpx
import openai
from prometheus_client.parser import text_string_to_metric_families

from qwenkit import store
from qwenkit.bench.loadtest import api_base
from qwenkit.bench.memory import meminfo, memory_bandwidth, torch_cuda
from qwenkit.errors import QwenkitError

HEALTHY, DEGRADED, UNHEALTHY = "healthy", "degraded", "unhealthy"
EXIT_CODES = {HEALTHY: 0, DEGRADED: 1, UNHEALTHY: 2}
_RANK = {HEALTHY: 0, DEGRADED: 1, UNHEALTHY: 2}
PROBE_PROMPT = "Count from 1 to 200, separated by spaces."
_LOOPBACK = {"127.0.0.1", "localhost", "::1"}


@dataclass(frozen=True)
class Thresholds:
    ttft_degraded_s: float = 2.0
    ttft_unhealthy_s: float = 10.0
    decode_degraded_ratio: float = 0.5
    decode_unhealthy_ratio: float = 0.1
    memory_degraded_ratio: float = 0.10
    memory_unhealthy_ratio: float = 0.03
    queue_degraded: int = 1
    error_rate_degraded: float = 0.01
    error_rate_unhealthy: float = 0.10


@dataclass
class Probe:
    """What a probe read; None where a reading could not be taken."""

    target: str
    model: str | None = None
    model_bytes: int | None = None
    quantization: str | None = None
    reachable: bool = True
    health_status: int | None = None  # HTTP status of /health (servers only)
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


@dataclass
class Finding:
    check: str
    status: str
    message: str
    advice: list[str] = field(default_factory=list)


@dataclass
class HealthReport:
    probe: Probe
    findings: list[Finding]

    @property
    def status(self) -> str:
        return max((f.status for f in self.findings), key=_RANK.__getitem__, default=HEALTHY)

    @property
    def exit_code(self) -> int:
        return EXIT_CODES[self.status]

    def to_dict(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "exit_code": self.exit_code,
            "findings": [asdict(f) for f in self.findings],
            "readings": asdict(self.probe),
        }


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
    local = store.resolve(ref, progress=False)
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
            probe.health_status = http.get(f"{root}/health").status_code
        except httpx.HTTPError:
            probe.reachable = False
            return probe
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


def _grade(value: float, degraded: float, unhealthy: float, *, higher_is_worse: bool) -> str:
    sign = 1 if higher_is_worse else -1  # compare as "higher is worse" throughout
    if sign * value > sign * unhealthy:
        return UNHEALTHY
    return DEGRADED if sign * value > sign * degraded else HEALTHY


def _finding(check: str, status: str, message: str, *advice: str) -> Finding:
    """A finding; advice is kept only when there is something to fix."""
    return Finding(check, status, message, [] if status == HEALTHY else list(advice))


def _smaller(probe: Probe) -> list[str]:
    return [f"a smaller model: {', '.join(probe.smaller_models)}"] if probe.smaller_models else []


def _lighter_quant(probe: Probe) -> str:
    if probe.quantization:
        return f"a smaller quantization than {probe.quantization} (e.g. Q3_K_M) reads fewer bytes per token"
    return "a smaller quantization (e.g. Q4_K_M, or --quantization 4bit on a GPU) reads fewer bytes per token"


def evaluate(probe: Probe, t: Thresholds) -> HealthReport:
    """Grade every reading the probe took against `t`; each finding carries its advice."""
    if not probe.reachable:
        advice = "check that the server runs and listens on this address and port"
        return HealthReport(probe, [_finding("reachable", UNHEALTHY, f"nothing answers at {probe.target}", advice)])
    findings: list[Finding] = []
    add = findings.append
    if probe.health_status is not None:
        status = HEALTHY if probe.health_status == 200 else UNHEALTHY
        advice = "the model is still loading or failed to load: wait, or read the server's log"
        add(_finding("reachable", status, f"/health answered {probe.health_status}", advice))
    _grade_generation(probe, t, add)
    for check, ratio, what in (
        ("memory", probe.memory_available_ratio, "RAM"),
        ("gpu_memory", probe.gpu_memory_available_ratio, "GPU memory"),
    ):
        if ratio is not None:
            status = _grade(ratio, t.memory_degraded_ratio, t.memory_unhealthy_ratio, higher_is_worse=False)
            add(
                _finding(
                    check,
                    status,
                    f"{ratio:.0%} of {what} available",
                    "a shorter context (--ctx) or fewer parallel slots (--parallel): the KV cache shrinks with both",
                    _lighter_quant(probe),
                    *_smaller(probe),
                )
            )
    if probe.requests_waiting is not None:
        waiting = int(probe.requests_waiting)
        status = DEGRADED if waiting >= t.queue_degraded else HEALTHY
        running = "" if probe.requests_running is None else f", {int(probe.requests_running)} running"
        add(
            _finding(
                "queue",
                status,
                f"{waiting} request(s) waiting for a slot{running}",
                "more parallel slots (qwenkit serve --parallel N, memory allowing) or another replica",
                "--max-queue bounds how many requests wait before a 429",
            )
        )
    if probe.error_rate is not None:
        status = _grade(probe.error_rate, t.error_rate_degraded, t.error_rate_unhealthy, higher_is_worse=True)
        message = f"{probe.error_rate:.1%} of {probe.completions_counted} completions were answered 5xx"
        add(_finding("errors", status, message, "read the server's log for the failing requests"))
    return HealthReport(probe, findings)


def _grade_generation(probe: Probe, t: Thresholds, add: Callable[[Finding], None]) -> None:
    if probe.generation_error == "http_429":
        add(
            _finding(
                "generation",
                DEGRADED,
                "the probe was refused with 429: every slot busy and the queue full",
                "more parallel slots (qwenkit serve --parallel N) or another replica behind a load balancer",
                "a larger --max-queue if clients can wait",
            )
        )
        return
    if probe.generation_error is not None:
        add(
            _finding(
                "generation",
                UNHEALTHY,
                f"the probe generation failed: {probe.generation_error}",
                "read the server's log; restart it if it does not recover",
            )
        )
        return
    add(_finding("generation", HEALTHY, f"generated {probe.generated_tokens} tokens"))
    if probe.ttft_s is not None:
        status = _grade(probe.ttft_s, t.ttft_degraded_s, t.ttft_unhealthy_s, higher_is_worse=True)
        add(
            _finding(
                "ttft",
                status,
                f"first token after {probe.ttft_s:.3f} s (degraded above {t.ttft_degraded_s} s)",
                "shorter prompts or a shorter context (--ctx); a shared system prompt is cached",
                "fewer parallel slots if prompts queue behind each other",
                *_smaller(probe),
            )
        )
    if probe.decode_tokens_per_s is not None and probe.expected_decode_tokens_per_s:
        ratio = probe.decode_tokens_per_s / probe.expected_decode_tokens_per_s
        status = _grade(ratio, t.decode_degraded_ratio, t.decode_unhealthy_ratio, higher_is_worse=False)
        message = (
            f"decoding at {probe.decode_tokens_per_s:.1f} tok/s, {ratio:.0%} of the "
            f"{probe.expected_decode_tokens_per_s:.1f} tok/s this machine's memory bandwidth allows for these weights"
        )
        add(
            _finding(
                "decode",
                status,
                message,
                "fewer threads (--threads, e.g. half the cores) on a busy or shared machine",
                _lighter_quant(probe),
                *_smaller(probe),
            )
        )


def check(
    *, model: str | None, url: str | None, thresholds: Thresholds, api_key: str | None = None, **probe_options: Any
) -> HealthReport:
    """Probe a model or a server and grade it."""
    if (model is None) == (url is None):
        raise QwenkitError("give either --model or --url")
    probe = probe_url(url, api_key=api_key, **probe_options) if url else probe_model(model, **probe_options)  # type: ignore[arg-type]
    return evaluate(probe, thresholds)
