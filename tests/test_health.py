"""`qwenkit health` in its three states, each provoked for real: a dead URL (unhealthy), a server
whose queue is full (degraded: the probe gets a 429), thresholds no machine can meet, and a
working server (healthy)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from serve_helpers import free_port, slot_held, start_server

from qwenkit.bench.health import DEGRADED, HEALTHY, UNHEALTHY, Thresholds, evaluate
from qwenkit.bench.probe import Probe

CLI = [sys.executable, "-c", "from qwenkit.cli import main; main()"]


def health(*args: str) -> tuple[int, dict]:
    done = subprocess.run([*CLI, "health", *args, "--json"], capture_output=True, text=True, timeout=300)
    assert done.returncode in (0, 1, 2), done.stderr
    return done.returncode, json.loads(done.stdout)


def by_check(report: dict) -> dict[str, dict]:
    return {f["check"]: f for f in report["findings"]}


def test_grading_takes_the_worst_finding_and_advises_only_on_problems():
    probe = Probe(target="t", health_status=200, ttft_s=0.5, decode_tokens_per_s=5.0, generated_tokens=8)
    probe.expected_decode_tokens_per_s, probe.memory_available_ratio = 20.0, 0.5
    probe.requests_waiting, probe.requests_running, probe.error_rate, probe.completions_counted = 0, 1, 0.0, 10
    report = evaluate(probe, Thresholds())
    findings = {f.check: f for f in report.findings}
    assert findings["decode"].status == DEGRADED and findings["decode"].advice  # 25% of the roofline
    assert all(f.status == HEALTHY and not f.advice for c, f in findings.items() if c != "decode")
    assert report.status == DEGRADED and report.exit_code == 1
    probe.memory_available_ratio = 0.01
    assert evaluate(probe, Thresholds()).status == UNHEALTHY
    probe.memory_available_ratio, probe.decode_tokens_per_s = 0.5, 15.0
    assert evaluate(probe, Thresholds()).exit_code == 0


def test_a_cluster_short_of_replicas_is_degraded_and_one_with_none_ready_unhealthy():
    probe = Probe(target="t", health_status=200, generated_tokens=8, replicas_target=2, replicas_ready=1)
    report = evaluate(probe, Thresholds())
    replicas = by_check(report.to_dict())["replicas"]
    assert report.status == DEGRADED and report.exit_code == 1
    assert replicas["message"] == "1 of 2 replica(s) ready" and replicas["advice"]
    probe.replicas_ready = 0
    assert evaluate(probe, Thresholds()).exit_code == 2
    probe.replicas_ready = 2
    assert evaluate(probe, Thresholds()).exit_code == 0


def test_dead_url_is_unhealthy():
    code, report = health("--url", f"http://127.0.0.1:{free_port()}")
    assert code == 2 and report["status"] == UNHEALTHY
    assert by_check(report)["reachable"]["advice"]


def test_needs_exactly_one_target():
    done = subprocess.run([*CLI, "health"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 1 and done.stderr.strip() == "error: give either --model or --url"


@pytest.fixture(scope="module")
def server(source_gguf):
    with start_server(source_gguf, "--max-queue", "0", parallel=1, ctx=1024) as s:
        yield s


@pytest.mark.integration
def test_working_server_is_healthy(server):
    # speed thresholds loosened for a shared CI machine; every other check at its default
    code, report = health("--url", server.url, "--max-ttft", "30", "--min-decode-ratio", "0.02")
    checks = by_check(report)
    assert code == 0 and report["status"] == HEALTHY, report
    assert {"reachable", "generation", "ttft", "decode", "memory", "queue", "errors"} <= set(checks)
    readings = report["readings"]
    assert readings["model"].startswith("qwen2.5-coder-0.5b-instruct") and readings["generated_tokens"] > 1
    assert readings["expected_decode_tokens_per_s"] > 0 and readings["model_bytes"] > 400 * 2**20


@pytest.mark.integration
def test_impossible_threshold_is_degraded(server):
    code, report = health("--url", server.url, "--max-ttft", "0", "--min-decode-ratio", "0.02")
    assert code == 1 and report["status"] == DEGRADED
    assert by_check(report)["ttft"]["status"] == DEGRADED and by_check(report)["ttft"]["advice"]


@pytest.mark.integration
def test_full_queue_is_degraded_with_advice(server):
    with slot_held(server):
        code, report = health("--url", server.url)
    generation = by_check(report)["generation"]
    assert code == 1 and report["status"] == DEGRADED
    assert generation["status"] == DEGRADED and "429" in generation["message"]
    assert any("--parallel" in advice for advice in generation["advice"])


@pytest.mark.integration
def test_model_loaded_here_against_an_impossible_threshold_is_unhealthy():
    code, report = health("--model", "default", "--threads", "1", "--max-ttft", "0", "--unhealthy-ttft", "0")
    assert code == 2 and report["status"] == UNHEALTHY
    assert by_check(report)["ttft"]["status"] == UNHEALTHY
    assert by_check(report)["memory"]["status"] in (HEALTHY, DEGRADED)  # read from this machine
    assert report["readings"]["quantization"] == "Q4_K_M"
