"""`qwenkit pull` of catalogue names against a local fake Hub: download, resume, corruption, splits,
`models --all` and `rm`; the downloaded GGUF loads."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from fake_hub import FakeHub

from qwenkit.errors import QwenkitError

REPO, FILE = "Qwen/Qwen3-0.6B-GGUF", "Qwen3-0.6B-Q8_0.gguf"  # what `qwen3-0.6b:q8_0` names


def qwenkit(hub: FakeHub, home, *args: str) -> subprocess.CompletedProcess[str]:
    env = hub.env(home, QWENKIT_PROGRESS="1")
    cmd = [sys.executable, "-c", "from qwenkit.cli import main; main()", *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)


@pytest.fixture(scope="module")
def gguf_bytes(tiny_qwen3):
    return tiny_qwen3.read_bytes()


@pytest.fixture
def hub(gguf_bytes):
    with FakeHub() as h:
        h.add(REPO, FILE, gguf_bytes)
        yield h


def test_pull_downloads_verifies_and_the_result_loads(hub, tmp_path, gguf_bytes):
    res = qwenkit(hub, tmp_path, "pull", "qwen3-0.6b:q8_0")
    assert res.returncode == 0, res.stderr
    path = tmp_path / "hf" / REPO / FILE
    assert path.read_bytes() == gguf_bytes
    assert "download Qwen3-0.6B-Q8_0.gguf" in res.stderr and "verify" in res.stderr  # rich bars on stderr
    stamp = json.loads(path.with_name(FILE + ".verified.json").read_text())
    assert stamp["size"] == len(gguf_bytes)

    from qwenkit.engines.llamacpp.model import LlamaModel

    model = LlamaModel(path)
    try:
        assert model.n_vocab > 151_000 and model.meta("general.architecture") == "qwen3"
    finally:
        model.close()

    gets = [r for r in hub.requests if r[0] == "GET" and r[1].endswith(FILE)]
    res = qwenkit(hub, tmp_path, "pull", "qwen3-0.6b:q8_0")  # cached: re-hashed, not downloaded
    assert res.returncode == 0, res.stderr
    assert [r for r in hub.requests if r[0] == "GET" and r[1].endswith(FILE)] == gets


def test_pull_resumes_after_a_cut_connection(hub, tmp_path, gguf_bytes):
    hub.cut[FILE] = 10 << 20
    res = qwenkit(hub, tmp_path, "pull", "qwen3-0.6b:q8_0")
    assert res.returncode == 0, res.stderr
    ranges = [r[2] for r in hub.requests if r[0] == "GET" and r[1].endswith(FILE)]
    assert ranges[0] is None and ranges[1] == f"bytes={10 << 20}-"  # the rest only, not from the start
    assert (tmp_path / "hf" / REPO / FILE).read_bytes() == gguf_bytes


def test_pull_detects_a_corrupted_download(hub, tmp_path, gguf_bytes):
    bad = bytearray(gguf_bytes)
    bad[len(bad) // 2] ^= 0xFF
    hub.corrupt[FILE] = bytes(bad)
    res = qwenkit(hub, tmp_path, "pull", "qwen3-0.6b:q8_0")
    assert res.returncode == 1
    assert "does not match the Hub's sha256" in res.stderr and "Traceback" not in res.stderr
    assert not (tmp_path / "hf" / REPO / FILE).exists()


def test_a_cached_file_corrupted_later_is_fetched_again(hub, tmp_path, gguf_bytes):
    assert qwenkit(hub, tmp_path, "pull", "qwen3-0.6b:q8_0").returncode == 0
    path = tmp_path / "hf" / REPO / FILE
    with open(path, "r+b") as f:
        f.seek(1000)
        f.write(b"\0" * 16)
    res = qwenkit(hub, tmp_path, "pull", "qwen3-0.6b:q8_0")
    assert res.returncode == 0, res.stderr
    assert path.read_bytes() == gguf_bytes


def test_split_gguf_on_the_hub_is_found_and_every_shard_verified(tmp_path):
    """The catalogue names qwen2.5-7b-instruct:q2_k as one file; the Hub may hold it split."""
    shards = {f"qwen2.5-7b-instruct-q2_k-0000{i}-of-00002.gguf": b"GGUF" + bytes([i]) * 1000 for i in (1, 2)}
    with FakeHub() as hub:
        for name, data in shards.items():
            hub.add("Qwen/Qwen2.5-7B-Instruct-GGUF", name, data)
        res = qwenkit(hub, tmp_path, "pull", "qwen2.5-7b-instruct:q2_k")
        # the shards are not a loadable model (fake bytes); the download and checks are the point
        assert "does not match" not in res.stderr
        for name, data in shards.items():
            assert (tmp_path / "hf" / "Qwen/Qwen2.5-7B-Instruct-GGUF" / name).read_bytes() == data


def test_models_all_shows_cached_state_and_rm_removes(hub, tmp_path, gguf_bytes):
    assert qwenkit(hub, tmp_path, "pull", "qwen3-0.6b:q8_0").returncode == 0
    res = qwenkit(hub, tmp_path, "models", "--all", "--json")
    rows = {r["name"]: r for r in json.loads(res.stdout)}
    assert rows["qwen3-0.6b:q8_0"]["cached"] and rows["qwen3-0.6b:q8_0"]["size_on_disk"] == len(gguf_bytes)
    assert not rows["qwen3-8b:q4_k_m"]["cached"]
    assert len(rows) > 200
    res = qwenkit(hub, tmp_path, "rm", "qwen3-0.6b:q8_0")
    assert res.returncode == 0 and "removed" in res.stderr
    assert not (tmp_path / "hf" / REPO / FILE).exists()
    res = qwenkit(hub, tmp_path, "rm", "qwen3-0.6b:q8_0")
    assert res.returncode == 1 and "not in the cache" in res.stderr


def test_unknown_names_and_sources_are_one_line_errors(hub, tmp_path):
    res = qwenkit(hub, tmp_path, "pull", "qwen3-8b:q3_k_s")
    assert res.returncode == 1 and "available: q4_k_m" in res.stderr
    res = qwenkit(hub, tmp_path, "pull", "qwen3-8b", "--source", "nowhere")
    assert res.returncode == 1 and "unknown source" in res.stderr
    res = qwenkit(hub, tmp_path, "pull", "qwen3-8b:q4_k_m")  # not on this hub
    assert res.returncode == 1 and "Traceback" not in res.stderr


def test_modelscope_without_its_package_says_how_to_get_it(monkeypatch, tmp_path):
    from qwenkit.catalog.fetch import resolve

    monkeypatch.setenv("QWENKIT_HOME", str(tmp_path))
    for name in ("modelscope", "modelscope.hub.api", "modelscope.hub.snapshot_download"):
        monkeypatch.setitem(sys.modules, name, None)  # as if not installed, even if imported before
    with pytest.raises(QwenkitError, match=r'pip install "qwenkit\[modelscope\]"'):
        resolve("qwen3-8b:q4_k_m", source="modelscope")
    with pytest.raises(QwenkitError, match="takes catalogue names"):
        resolve("hf:Qwen/Qwen3-8B-GGUF", source="modelscope")


def test_a_qwen35_name_resolves_to_its_gguf_and_models_all_lists_the_new_generation(tmp_path, gguf_bytes):
    """`qwenkit pull qwen3.5-4b` takes the default quant (q4_k_m) from the catalogue's repo."""
    repo, file = "unsloth/Qwen3.5-4B-GGUF", "Qwen3.5-4B-Q4_K_M.gguf"
    with FakeHub() as hub:
        hub.add(repo, file, gguf_bytes)
        res = qwenkit(hub, tmp_path, "pull", "qwen3.5-4b")
        assert res.returncode == 0, res.stderr
        assert (tmp_path / "hf" / repo / file).read_bytes() == gguf_bytes
        assert any(r[1].startswith(f"/{repo}/resolve/") for r in hub.requests)
        res = qwenkit(hub, tmp_path, "models", "--all", "--json")
    rows = {r["name"]: r for r in json.loads(res.stdout)}
    assert rows["qwen3.5-4b:q4_k_m"]["cached"]
    wanted = {"qwen3.5-397b-a17b:fp8", "qwen3-next-80b-a3b-instruct:q4_k_m", "qwen3-coder-30b-a3b-instruct:q4_k_m"}
    assert wanted <= set(rows) and not rows["qwen3.5-397b-a17b:fp8"]["cached"]
