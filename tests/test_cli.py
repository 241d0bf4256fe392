"""The `qwenkit` command, run as a subprocess the way a user runs it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from qwenkit import store

THREADS = os.environ.get("QWENKIT_TEST_THREADS", "2")


def _qwenkit() -> str:
    beside = Path(sys.executable).with_name("qwenkit")
    found = str(beside) if beside.is_file() else shutil.which("qwenkit")
    if not found:
        pytest.skip("the qwenkit command is not installed")
    return found


def cli(*args: str, stdin: str | None = None, timeout: float = 900) -> subprocess.CompletedProcess:
    """Run qwenkit; stdout and stderr decoded as UTF-8, newlines untouched."""
    env = {**os.environ, "QWENKIT_HOME": str(store.home()), "NO_COLOR": "1"}
    proc = subprocess.run(
        [_qwenkit(), *args],
        input=None if stdin is None else stdin.encode(),
        capture_output=True,
        timeout=timeout,
        env=env,
    )
    proc.stdout = proc.stdout.decode("utf-8")
    proc.stderr = proc.stderr.decode("utf-8")
    return proc


def check_ok(proc):
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr


def check_one_line_error(proc, contains: str | None = None):
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr and "Traceback" not in proc.stdout
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got:\n{proc.stderr}"
    assert lines[0].startswith("error:"), lines[0]
    if contains:
        assert contains in lines[0]
    assert proc.stdout == ""


@pytest.fixture(scope="module")
def tiny2(tiny_qwen2):
    return str(tiny_qwen2)


@pytest.fixture(scope="module")
def tiny3(tiny_qwen3):
    return str(tiny_qwen3)


# ----- the real model ----------------------------------------------------------------------


@pytest.mark.integration
def test_run_writes_real_code(source_gguf):
    proc = cli("run", "Write a Python function that adds two numbers", "-n", "48", "--temperature", "0", "-t", THREADS)
    check_ok(proc)
    assert "def " in proc.stdout
    assert "(stopped at --max-tokens)" not in proc.stdout  # notes go to stderr


@pytest.mark.integration
def test_models_lists_the_cached_default_model(source_gguf):
    proc = cli("models")
    check_ok(proc)
    assert "qwen2.5-coder-0.5b-instruct" in proc.stdout
    assert "Q4_K_M" in proc.stdout


@pytest.mark.integration
def test_chat_through_stdin_with_the_real_model(source_gguf):
    proc = cli("chat", "-n", "8", "-t", THREADS, stdin="/no_think\nhello\n/reset\n/exit\n")
    check_ok(proc)
    assert "ready" in proc.stderr
    assert "thinking off" in proc.stderr and "history cleared" in proc.stderr
    answer = proc.stdout.replace(">>> ", "").strip()
    assert answer, "no answer on stdout"
    assert "tokens" in proc.stderr  # the per-answer stats line


# ----- tiny models -------------------------------------------------------------------------


def test_run_json_is_one_object(tiny2):
    proc = cli("run", "Tell me a story.", "-m", tiny2, "-n", "8", "--temperature", "0", "--json", "-t", THREADS)
    check_ok(proc)
    data = json.loads(proc.stdout)  # the whole stdout is one JSON document
    assert isinstance(data, dict)
    assert {"text", "reasoning", "finish_reason", "usage", "timings"} <= set(data)
    assert isinstance(data["text"], str) and data["reasoning"] is None
    assert data["finish_reason"] == "length"
    usage = data["usage"]
    assert usage["completion_tokens"] == 8 and usage["prompt_tokens"] > 0
    assert usage["total_tokens"] == usage["prompt_tokens"] + 8
    assert {"ttft_s", "total_s", "decode_tokens_per_s"} <= set(data["timings"])
    assert data["tool_calls"] == []


def test_streamed_run_prints_the_same_text_as_json(tiny2):
    args = ("run", "Tell me a story.", "-m", tiny2, "-n", "12", "--temperature", "0", "-t", THREADS)
    streamed = cli(*args)
    whole = cli(*args, "--json")
    check_ok(streamed)
    check_ok(whole)
    assert streamed.stdout == json.loads(whole.stdout)["text"] + "\n"
    assert "(stopped at --max-tokens)" in streamed.stderr


def test_run_reads_the_prompt_from_stdin(tiny2):
    from_stdin = cli(
        "run", "-", "-m", tiny2, "-n", "6", "--temperature", "0", "--json", "-t", THREADS, stdin="Say the word banana"
    )
    from_arg = cli("run", "Say the word banana", "-m", tiny2, "-n", "6", "--temperature", "0", "--json", "-t", THREADS)
    check_ok(from_stdin)
    check_ok(from_arg)
    a, b = json.loads(from_stdin.stdout), json.loads(from_arg.stdout)
    assert a["usage"] == b["usage"] and a["text"] == b["text"]


def test_echo_hi_piped_to_run(tiny2):
    proc = cli("run", "-", "-m", tiny2, "-n", "4", "-t", THREADS, stdin="hi\n")
    check_ok(proc)
    assert proc.stdout.endswith("\n") and proc.stdout.strip()


def test_run_with_thinking_off_on_qwen3(tiny3):
    proc = cli("run", "hi", "-m", tiny3, "-n", "6", "--no-think", "--json", "-t", THREADS)
    check_ok(proc)
    data = json.loads(proc.stdout)
    assert data["reasoning"] is None and data["usage"]["reasoning_tokens"] == 0
    assert data["usage"]["completion_tokens"] == 6


def test_chat_through_stdin(tiny3):
    proc = cli("chat", "-m", tiny3, "-n", "5", "-t", THREADS, stdin="/no_think\nhello\n/reset\nagain\n/exit\n")
    check_ok(proc)
    assert "thinking off" in proc.stderr and "history cleared" in proc.stderr
    assert proc.stderr.count("5 tokens") == 2  # two answers, each cut at -n 5
    assert proc.stdout.replace(">>> ", "").strip()


def test_chat_ends_at_end_of_input(tiny2):
    proc = cli("chat", "-m", tiny2, "-n", "3", "-t", THREADS, stdin="hello\n")
    check_ok(proc)
    assert "3 tokens" in proc.stderr


# ----- errors: one line on stderr, non-zero exit, no traceback ----------------------------


def test_bad_model_reference():
    check_one_line_error(cli("run", "hi", "-m", "no-such-model"), "unknown model")


def test_missing_gguf_path(tmp_path):
    check_one_line_error(cli("run", "hi", "-m", str(tmp_path / "missing.gguf")), "missing.gguf")


def test_random_bytes_named_gguf(tmp_path):
    path = tmp_path / "x.gguf"
    path.write_bytes(os.urandom(8192))
    check_one_line_error(cli("run", "hi", "-m", str(path)), "x.gguf")


def test_random_bytes_after_gguf_magic(tmp_path):
    path = tmp_path / "x.gguf"
    path.write_bytes(b"GGUF" + os.urandom(8192))
    check_one_line_error(cli("run", "hi", "-m", str(path)), "x.gguf")


@pytest.mark.parametrize("keep", [64 * 1024, "half"])
def test_truncated_gguf(tmp_path, tiny2, keep):
    data = Path(tiny2).read_bytes()
    path = tmp_path / "cut.gguf"
    path.write_bytes(data[: len(data) // 2 if keep == "half" else keep])
    check_one_line_error(cli("run", "hi", "-m", str(path), "-t", THREADS), "could not load")


def test_truncated_copy_of_the_real_gguf_header(tmp_path, source_gguf):
    path = tmp_path / "head.gguf"
    with open(source_gguf, "rb") as f:
        path.write_bytes(f.read(200_000))
    check_one_line_error(cli("run", "hi", "-m", str(path), "-t", THREADS), "head.gguf")


@pytest.mark.parametrize("prompt", ["", "   ", "\n"])
def test_empty_prompt(prompt):
    check_one_line_error(cli("run", prompt), "empty")  # refused before any model is loaded


def test_empty_stdin_prompt():
    check_one_line_error(cli("run", "-", stdin=""), "empty")


@pytest.mark.parametrize("value", ["0", "-5", "many"])
def test_bad_max_tokens(value):
    check_one_line_error(cli("run", "hi", "--max-tokens", value), "max-tokens")


def test_usage_errors():
    check_one_line_error(cli("run"), "prompt")
    check_one_line_error(cli("run", "hi", "--no-such-option"), "--no-such-option")
    check_one_line_error(cli("no-such-command"), "no-such-command")


def test_prompt_longer_than_the_context(tiny2):
    check_one_line_error(cli("run", "hello " * 100, "-m", tiny2, "--ctx", "64", "-t", THREADS), "context")


def test_help_works():
    proc = cli("--help")
    check_ok(proc)
    assert "run" in proc.stdout and "chat" in proc.stdout


# ----- images (Qwen2.5-VL): run --image and /image in chat -------------------------------------


@pytest.fixture(scope="module")
def pictures(tmp_path_factory):
    from PIL import Image

    root = tmp_path_factory.mktemp("pictures")
    for name, color in (("red.png", (220, 0, 0)), ("blue.png", (0, 0, 220))):
        Image.new("RGB", (64, 48), color).save(root / name)
    return root


def test_run_with_images(tiny_hf_qwen2_vl, pictures):
    args = ("-m", str(tiny_hf_qwen2_vl), "--engine", "transformers", "-n", "5", "--temperature", "0", "--json")
    both = cli(
        "run", "Compare", "-i", str(pictures / "red.png"), "-i", str(pictures / "blue.png"), *args, "-t", THREADS
    )
    check_ok(both)
    result = json.loads(both.stdout)
    assert result["text"] and result["usage"]["prompt_tokens"] > 2 * 4  # two images of 4 tokens each
    missing = cli("run", "What?", "--image", str(pictures / "none.png"), *args, "-t", THREADS)
    check_one_line_error(missing, "cannot read image")


def test_chat_attaches_an_image_to_the_next_message(tiny_hf_qwen2_vl, pictures):
    stdin = f"/image {pictures / 'red.png'}\nWhat is this?\n/image {pictures / 'nope.png'}\n/exit\n"
    proc = cli("chat", "-m", str(tiny_hf_qwen2_vl), "--engine", "transformers", "-n", "4", "-t", THREADS, stdin=stdin)
    check_ok(proc)
    assert "red.png attached" in proc.stderr and "4 tokens" in proc.stderr and "no such file" in proc.stderr


def test_prefix_cache_tokens_is_for_the_transformers_engine(tiny2):
    proc = cli("run", "hi", "-m", tiny2, "-n", "1", "--prefix-cache-tokens", "0")
    check_one_line_error(proc, "prefix cache, not llamacpp's")


def test_chat_reset_drops_images_attached_for_the_next_message(tiny2, pictures):
    stdin = f"/image {pictures / 'red.png'}\n/reset\nhi\n/exit\n"
    proc = cli("chat", "-m", tiny2, "-n", "3", "-t", THREADS, stdin=stdin)
    check_ok(proc)
    assert "1 attached image(s) dropped" in proc.stderr and "takes text only" not in proc.stderr


def test_a_text_only_model_refuses_run_image(tiny2, pictures):
    proc = cli("run", "What is this?", "--image", str(pictures / "red.png"), "-m", tiny2, "-n", "3", "-t", THREADS)
    check_one_line_error(proc, "takes text only")


def test_run_with_speculation_off_and_on_prints_the_same(tiny2):
    args = ("run", "Tell me a story.", "-m", tiny2, "-n", "12", "--temperature", "0", "--json", "-t", THREADS)
    off, on = cli(*args, "--speculative", "off"), cli(*args, "--speculative", "ngram", "--draft-max", "4")
    check_ok(off)
    check_ok(on)
    assert json.loads(on.stdout)["text"] == json.loads(off.stdout)["text"]
    check_one_line_error(cli("run", "hi", "--speculative", "sometimes"), "speculative")
    check_one_line_error(cli("run", "hi", "--draft-max", "-1"), "draft-max")
