"""`qwenkit pull NAME --source modelscope` end to end through the real `modelscope` package, against a
local fake ModelScope (MODELSCOPE_ENDPOINT): download, cache, load; a corrupted file is refused (the
package checks the listing's sha256); a file the repo lacks is a one-line error. Nothing but the fake is
reached: any other host goes to a dead proxy."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import pytest
from fake_hub import FakeModelScope

# found, not imported: importing it here would leave it in sys.modules for the other tests
pytestmark = pytest.mark.skipif(importlib.util.find_spec("modelscope") is None, reason="needs modelscope")

REPO, FILE = "Qwen/Qwen3-0.6B-GGUF", "Qwen3-0.6B-Q8_0.gguf"  # what `qwen3-0.6b:q8_0` names


def qwenkit(ms: FakeModelScope, home, *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(
        os.environ,
        MODELSCOPE_ENDPOINT=ms.url,
        MODELSCOPE_CACHE=str(home / "ms-cache"),
        MODELSCOPE_HOME=str(home / "ms-home"),
        QWENKIT_HOME=str(home),
        HF_ENDPOINT="http://127.0.0.1:9",  # the Hub must not be asked either
        HTTP_PROXY="http://127.0.0.1:9",  # whatever is not the fake fails instead of going out
        HTTPS_PROXY="http://127.0.0.1:9",
        NO_PROXY="127.0.0.1",
    )
    for name in ("MODELSCOPE_DOMAIN", "MODELSCOPE_API_TOKEN", "http_proxy", "https_proxy", "no_proxy", "ALL_PROXY"):
        env.pop(name, None)
    env["no_proxy"] = "127.0.0.1"
    cmd = [sys.executable, "-c", "from qwenkit.cli import main; main()", "pull", *args, "--source", "modelscope"]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)


@pytest.fixture(scope="module")
def gguf_bytes(tiny_qwen3):
    return tiny_qwen3.read_bytes()


@pytest.fixture
def ms(gguf_bytes):
    with FakeModelScope() as fake:
        fake.add(REPO, FILE, gguf_bytes)
        yield fake


def test_pull_from_modelscope_lands_in_the_cache_and_loads(ms, tmp_path, gguf_bytes):
    res = qwenkit(ms, tmp_path, "qwen3-0.6b:q8_0")
    assert res.returncode == 0, res.stderr
    path = tmp_path / "modelscope" / REPO / FILE
    assert path.read_bytes() == gguf_bytes
    stamp = json.loads(path.with_name(FILE + ".verified.json").read_text())
    assert stamp["size"] == len(gguf_bytes)
    assert all(p.startswith("/api/v1/") for _, p, _ in ms.requests), ms.requests
    assert ("GET", f"/api/v1/models/{REPO}/repo", None) in ms.requests  # the bytes came from the fake

    from qwenkit.engines.llamacpp.model import LlamaModel

    model = LlamaModel(path)
    try:
        assert model.n_vocab > 151_000 and model.meta("general.architecture") == "qwen3"
    finally:
        model.close()

    downloads = ms.requests.count(("GET", f"/api/v1/models/{REPO}/repo", None))
    res = qwenkit(ms, tmp_path, "qwen3-0.6b:q8_0")  # cached: not downloaded again
    assert res.returncode == 0, res.stderr
    assert ms.requests.count(("GET", f"/api/v1/models/{REPO}/repo", None)) == downloads


def test_a_corrupted_modelscope_download_is_refused(ms, tmp_path, gguf_bytes):
    bad = bytearray(gguf_bytes)
    bad[len(bad) // 2] ^= 0xFF
    ms.corrupt[FILE] = bytes(bad)
    res = qwenkit(ms, tmp_path, "qwen3-0.6b:q8_0")
    assert res.returncode == 1
    assert "Traceback" not in res.stderr
    last = res.stderr.strip().splitlines()[-1]  # the package's own log lines come before
    assert last.startswith(f"error: cannot fetch modelscope:{REPO}: ") and "Hash mismatch" in last, last
    assert not (tmp_path / "modelscope" / REPO / FILE).exists()
    assert not (tmp_path / "modelscope" / REPO / (FILE + ".verified.json")).exists()


def test_a_file_the_modelscope_repo_lacks_is_a_one_line_error(tmp_path):
    with FakeModelScope() as ms:
        ms.add(REPO, "Qwen3-0.6B-Q4_K_M.gguf", b"GGUF" + b"\0" * 100)  # another quantisation only
        res = qwenkit(ms, tmp_path, "qwen3-0.6b:q8_0")
        assert res.returncode == 1 and "Traceback" not in res.stderr
        assert res.stderr == f"error: modelscope:{REPO} has no {FILE}\n"
        res = qwenkit(ms, tmp_path, "qwen3-8b:q4_k_m")  # a repo the fake does not hold
        assert res.returncode == 1 and "Traceback" not in res.stderr
        assert (
            res.stderr.startswith("error: cannot fetch modelscope:Qwen/Qwen3-8B-GGUF: ") and res.stderr.count("\n") == 1
        )
        assert not (tmp_path / "modelscope" / REPO / FILE).exists()
