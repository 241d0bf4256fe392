"""Every verb takes a catalogue name (`qwen3-0.6b:q8_0`) as `run` does: resolved by the
catalogue's resolver, downloaded once from a local fake Hub, then taken from the cache."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from fake_hub import FakeHub
from serve_helpers import start_server

NAME, REPO, FILE = "qwen3-0.6b:q8_0", "Qwen/Qwen3-0.6B-GGUF", "Qwen3-0.6B-Q8_0.gguf"


@pytest.fixture(scope="module")
def hub_env(tiny_qwen3, tmp_path_factory) -> Iterator[dict[str, str]]:
    """The environment of a qwenkit whose Hugging Face is the fake Hub holding the tiny Qwen3 as `NAME`."""
    home = tmp_path_factory.mktemp("catalogue-home")
    with FakeHub() as hub:
        hub.add(REPO, FILE, Path(tiny_qwen3).read_bytes())
        yield hub.env(home)


def qwenkit(env: dict[str, str], *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-c", "from qwenkit.cli import main; main()", *args]
    return subprocess.run(cmd, input=stdin, capture_output=True, text=True, env=env, timeout=600)


def ok(proc: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def test_run_and_chat(hub_env):
    result = json.loads(ok(qwenkit(hub_env, "run", "hi", "-m", NAME, "-n", "3", "-t", "1", "--json")).stdout)
    assert result["usage"]["completion_tokens"] >= 1
    assert "ready" in ok(qwenkit(hub_env, "chat", "-m", NAME, "-n", "2", "-t", "1", stdin="hi\n")).stderr


def test_bench(hub_env):
    args = ["--prompt-tokens", "8", "--gen-tokens", "2", "--parallel", "1", "--repeat", "1", "-t", "1", "--json"]
    assert json.loads(ok(qwenkit(hub_env, "bench", "-m", NAME, *args)).stdout)["model_format"] == "gguf"


def test_eval(hub_env, tmp_path):
    args = ["--limit", "1", "--max-tokens", "4", "--concurrency", "1", "-t", "1", "--json"]
    assert json.loads(ok(qwenkit(hub_env, "eval", "humaneval", "-m", NAME, *args)).stdout)["metrics"]["problems"] == 1


def test_serve(hub_env):
    with start_server(NAME, env=hub_env) as server:
        ids = {m["id"] for m in server.get("/v1/models").json()["data"]}
    assert NAME in ids or "qwen3-0.6b" in " ".join(ids)


def test_export_onnx_and_the_onnx_engine(hub_env):
    pytest.importorskip("onnxruntime_genai")
    exported = Path(ok(qwenkit(hub_env, "export", "onnx", "-m", NAME)).stdout.strip())
    assert (exported / "genai_config.json").is_file()
    result = qwenkit(hub_env, "run", "hi", "-m", NAME, "--engine", "onnx", "-n", "2", "-t", "1", "--json")
    assert json.loads(ok(result).stdout)["usage"]["completion_tokens"] >= 1


def test_the_vllm_engine_gets_past_resolution(hub_env):
    """vLLM lives in its own environment: here the name resolves, the GGUF converts, then vLLM is missing."""
    proc = qwenkit(hub_env, "run", "hi", "-m", NAME, "--engine", "vllm", "-n", "2")
    if proc.returncode == 0:
        return  # an environment with vLLM ran it
    assert "catalogue" not in proc.stderr and "not found" not in proc.stderr.lower(), proc.stderr
    assert "vllm" in proc.stderr.lower(), proc.stderr


def test_tune(hub_env, tmp_path):
    pytest.importorskip("trl")
    args = ["--data", "demo", "--max-steps", "1", "--max-length", "64", "-t", "1", "--out", str(tmp_path / "tuned")]
    ok(qwenkit(hub_env, "tune", "-m", NAME, *args))
    assert (tmp_path / "tuned" / "adapter" / "adapter_config.json").is_file()
