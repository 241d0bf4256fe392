"""`qwenkit bench`: the measuring loop on a tiny checkpoint (transformers) and on the real model."""

from __future__ import annotations

import json
import subprocess
import sys
from importlib.metadata import version

import pytest

from qwenkit.bench.speed import BenchConfig, random_prompt, run_bench
from qwenkit.bench.stats import Spread, percentiles
from qwenkit.errors import QwenkitError

CLI = [sys.executable, "-c", "from qwenkit.cli import main; main()"]


def test_spread_and_percentiles():
    s = Spread.of([3.0, 1.0, 2.0, 10.0])
    assert (s.median, s.min, s.max) == (2.5, 1.0, 10.0)
    assert percentiles([1.0, 2.0, 3.0, 4.0, 5.0]) == {"p50": 3.0, "p95": 4.8, "p99": 4.96}
    assert percentiles([]) == {"p50": None, "p95": None, "p99": None}
    with pytest.raises(ValueError, match="no measurements"):
        Spread.of([])


def test_random_prompts_differ_per_seed():
    a, b = random_prompt(64, (0, 1)), random_prompt(64, (0, 2))
    assert len(a) == 64 and a != b and a == random_prompt(64, (0, 1))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(gen_tokens=1), "--gen-tokens"),
        (dict(parallel=()), "--parallel"),
        (dict(parallel=(0, 4)), "--parallel"),
        (dict(repeat=0), "--repeat"),
    ],
)
def test_config_refuses_nonsense(kwargs, message):
    with pytest.raises(QwenkitError, match=message):
        BenchConfig(**kwargs)


def test_cli_refuses_bad_levels_in_one_line():
    done = subprocess.run([*CLI, "bench", "--parallel", "1,x"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        "error: --parallel takes whole numbers separated by commas, e.g. 1,4,8 (got '1,x')"
    ]


def test_bench_transformers_on_tiny_checkpoint(tiny_hf_qwen2):
    steps: list[str] = []
    config = BenchConfig(
        model=str(tiny_hf_qwen2), engine="transformers", prompt_tokens=16, gen_tokens=4, parallel=(1, 3), repeat=2
    )
    result = run_bench(config, steps.append).to_dict()
    assert len(steps) == config.steps()
    assert result["engine"] == "transformers" and result["repeats"] == 2
    for key in ("load_s", "ttft_s", "prefill_tokens_per_s", "decode_tokens_per_s", "peak_rss_bytes"):
        spread = result[key]
        assert len(spread["samples"]) == 2 and 0 < spread["min"] <= spread["median"] <= spread["max"], key
    assert set(result["aggregate_tokens_per_s_by_parallel"]) == {"1", "3"}
    assert "llama_bench" not in result


@pytest.mark.integration
def test_bench_cli_on_real_model_json_and_plot(tmp_path):
    plot = tmp_path / "bench.png"
    cmd = [*CLI, "bench", "--prompt-tokens", "32", "--gen-tokens", "8", "--parallel", "1,2", "--repeat", "2"]
    done = subprocess.run(
        [*cmd, "--threads", "1", "--json", "--plot", str(plot)], capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["model"] == "qwen2.5-coder-0.5b-instruct" and result["engine"] == "llamacpp"
    assert result["threads"] == 1 and result["prompt_tokens"] == 32 and result["gen_tokens"] == 8
    decode = result["decode_tokens_per_s"]
    assert len(decode["samples"]) == 2 and decode["min"] > 0
    # one stream's prefill reads 32 tokens in one batch: faster than it writes them one by one
    assert result["prefill_tokens_per_s"]["median"] > decode["median"]
    assert result["peak_rss_bytes"]["min"] > result["model_bytes"] // 2  # the weights were read into memory
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _llama_bench_built() -> bool:
    from qwenkit.engines.llamacpp.vendor import work_dir

    return (work_dir() / f"llama_cpp_python-{version('llama-cpp-python')}" / "build" / "bin" / "llama-bench").exists()


@pytest.mark.integration
@pytest.mark.skipif(not _llama_bench_built(), reason="llama-bench is not built here (minutes of compiling)")
def test_bench_vs_llama_bench_interleaves_and_reports_ratios():
    config = BenchConfig(prompt_tokens=16, gen_tokens=8, parallel=(1,), repeat=2, threads=1, vs_llama_bench=True)
    steps: list[str] = []
    result = run_bench(config, steps.append)
    assert steps.count("llama-bench") == 2
    assert steps.index("llama-bench") > steps.index("single stream")  # repeat 1: qwenkit first, then ABBA
    assert steps[-1] != "llama-bench"  # repeat 2: llama-bench first
    out = result.to_dict()
    ratios = out["qwenkit_over_llama_bench"]
    assert out["llama_bench"]["decode_tokens_per_s"]["min"] > 0 and ratios["decode"] > 0 and ratios["prefill"] > 0
    assert ratios["decode"] == pytest.approx(
        out["decode_tokens_per_s"]["median"] / out["llama_bench"]["decode_tokens_per_s"]["median"], rel=1e-3
    )


@pytest.mark.integration
def test_bench_speculative_decodes_a_code_edit_off_and_on(tmp_path):
    cmd = [*CLI, "bench", "--prompt-tokens", "16", "--gen-tokens", "48", "--parallel", "1", "--repeat", "1"]
    done = subprocess.run(
        [*cmd, "--threads", "2", "--speculative", "--json"], capture_output=True, text=True, timeout=900
    )
    assert done.returncode == 0, done.stderr
    spec = json.loads(done.stdout)["speculative"]
    assert spec["case"]["name"] == "copy.py" and 200 <= spec["case"]["lines"] <= 400
    assert spec["decode_tokens_per_s_off"]["min"] > 0 and spec["decode_tokens_per_s_on"]["min"] > 0
    assert spec["accepted_share"]["median"] > 0.3  # the answer copies the file
    assert spec["speedup"] == pytest.approx(
        spec["decode_tokens_per_s_on"]["median"] / spec["decode_tokens_per_s_off"]["median"], rel=1e-2
    )
