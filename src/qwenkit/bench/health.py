"""`qwenkit health`: is a model (loaded here) or a server (by URL) fit to serve, and if not, why.

A probe generates a short reply for real and reads what the target reports about itself; each
check then compares one reading against two thresholds (degraded, unhealthy) and says what to
change. The overall status is the worst check's. Checks and their default thresholds:

| check | reading | degraded | unhealthy |
|---|---|---|---|
| reachable | the server answers, `/health` is 200 | - | no answer, or `/health` not 200 |
| replicas | replicas ready of those wanted (`serve --ray`'s `/health`) | fewer than wanted | none ready |
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

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from qwenkit.bench.probe import Probe, probe_model, probe_url
from qwenkit.errors import QwenkitError

HEALTHY, DEGRADED, UNHEALTHY = "healthy", "degraded", "unhealthy"
EXIT_CODES = {HEALTHY: 0, DEGRADED: 1, UNHEALTHY: 2}
_RANK = {HEALTHY: 0, DEGRADED: 1, UNHEALTHY: 2}


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
    if probe.replicas_target is not None and probe.replicas_ready is not None:
        add(_replicas_finding(probe.replicas_target, probe.replicas_ready))
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


def _replicas_finding(target: int, ready: int) -> Finding:
    status = HEALTHY if ready >= target else DEGRADED if ready else UNHEALTHY
    return _finding(
        "replicas",
        status,
        f"{ready} of {target} replica(s) ready",
        "Ray restarts lost replicas where capacity allows: if this lasts, add a node (or free its CPUs/resources) "
        "or lower --replicas",
    )


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
