"""`qwenkit eval` end to end: tiny models for the mechanics (resume, server backend), the real model for numbers."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys

import pytest
from serve_helpers import start_server

from qwenkit.evals.backends import InProcess, OpenAIServer
from qwenkit.evals.humaneval import HumanEval
from qwenkit.evals.records import RunRecords
from qwenkit.evals.runner import RunOptions, evaluate

OPTIONS = RunOptions(limit=4, concurrency=2, max_tokens=6)


@pytest.fixture(scope="module")
def tiny_backend(tiny_qwen2):
    backend = InProcess(str(tiny_qwen2), engine="llamacpp", concurrency=2, n_ctx=2048, threads=1)
    yield backend
    backend.close()


def _lines(records: RunRecords) -> list[str]:
    return records.problems_file.read_text(encoding="utf-8").splitlines()


def test_an_interrupted_run_resumes_without_redoing_finished_problems(tiny_backend, tmp_path):
    suite = HumanEval()
    records = RunRecords(tmp_path / "run")

    def interrupt_after_two(done: int, total: int, score: float) -> None:
        if done == 2:  # as Ctrl-C does: asyncio.run cancels the run and raises KeyboardInterrupt
            signal.raise_signal(signal.SIGINT)

    with pytest.raises(KeyboardInterrupt):
        asyncio.run(evaluate(suite, tiny_backend, OPTIONS, records, interrupt_after_two))
    before = _lines(records)
    assert 2 <= len(before) < 4

    summary = asyncio.run(evaluate(suite, tiny_backend, OPTIONS, records))
    after = _lines(records)
    assert after[: len(before)] == before  # finished problems kept as they were, not redone
    assert summary["problems_resumed"] == len(before) and summary["problems_run"] == 4 - len(before)
    assert sorted(json.loads(line)["id"] for line in after) == [f"HumanEval/{i}" for i in range(4)]
    correct = sum(json.loads(line)["correct"] for line in after)
    assert summary["metrics"] == {"problems": 4, "pass@1": 100 * correct / 4}
    settings = json.loads(records.run_file.read_text())["settings"]
    assert settings["sha256"] and settings["engine"] == "LlamaCppEngine" and settings["sampling"]["temperature"] == 0


def test_pass_at_k_samples_use_qwens_recommended_sampling(tiny_backend):
    options = RunOptions(limit=1, samples=3, concurrency=2, max_tokens=4)
    summary = asyncio.run(evaluate(HumanEval(), tiny_backend, options))
    assert set(summary["metrics"]) == {"problems", "pass@1", "pass@3"}


def test_a_server_backend_gets_the_same_request_shape(tiny_qwen2):
    with start_server(tiny_qwen2, parallel=2) as server:
        backend = OpenAIServer(server.url, model=None, model_file=tiny_qwen2, timeout=120)
        summary = asyncio.run(evaluate(HumanEval(), backend, RunOptions(limit=2, concurrency=2, max_tokens=6)))
    assert summary["metrics"]["problems"] == 2
    assert summary["finish_reasons"] == {"length": 2}


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    code = "from qwenkit.cli import main; main()"
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=900)


def test_the_cli_refuses_an_unknown_suite_in_one_line():
    result = _cli("eval", "nope")
    assert result.returncode == 1 and "unknown suite" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.integration
def test_humaneval_on_the_embedded_model_records_and_resumes(source_gguf, tmp_path):
    out = tmp_path / "he"
    first = _cli("eval", "humaneval", "--limit", "2", "--threads", "2", "--out", str(out), "--json")
    assert first.returncode == 0, first.stderr
    summary = json.loads(first.stdout)
    assert summary["published"]["value"] == 61.6 and summary["metrics"]["problems"] == 2
    settings = json.loads((out / "run.json").read_text())["settings"]
    assert settings["quantization"] == "Q4_K_M"
    assert settings["sha256"] == "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"
    # the canonical first problem is easy: the 0.5B coder solves it greedily
    records = {json.loads(line)["id"]: json.loads(line) for line in (out / "problems.jsonl").read_text().splitlines()}
    assert records["HumanEval/0"]["correct"] == 1
    second = _cli("eval", "humaneval", "--limit", "3", "--threads", "2", "--out", str(out), "--json")
    assert second.returncode == 0, second.stderr
    resumed = json.loads(second.stdout)
    assert resumed["problems_resumed"] == 2 and resumed["problems_run"] == 1


@pytest.mark.parametrize("think", [True, False])
def test_mmath_with_thinking_on_and_off(tiny_qwen3, tmp_path, think):
    from qwenkit.evals.mmath import MMath

    backend = InProcess(str(tiny_qwen3), engine="llamacpp", concurrency=2, n_ctx=2048, threads=1)
    records = RunRecords(tmp_path)
    options = RunOptions(limit=2, concurrency=2, think=think, thinking_budget=8, max_tokens=128)
    try:
        summary = asyncio.run(evaluate(MMath(), backend, options, records))
    finally:
        backend.close()
    assert set(summary["metrics"]["groups"]) == {"en", "zh"}  # one question, in its first two languages
    settings = json.loads(records.run_file.read_text())["settings"]
    assert settings["think"] is think and settings["thinking_budget"] == 8
    assert settings["sampling"]["temperature"] == (0.6 if think else 0.0)  # never greedy while thinking
    samples = [json.loads(line)["samples"][0] for line in _lines(records)]
    assert all((s["reasoning"] is not None) is think for s in samples)
    assert all(s["extraction"] in ("boxed", "plain", "none") for s in samples)
